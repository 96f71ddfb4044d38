"""Masked recall: a small memory task whose observations carry an action mask.

Actions ``Discrete(n)`` (``num_actions``, n >= 2); an episode has L + 1 steps t = 0..L
(``length``). Observation ``Dict(action_mask: int8 [n], observation: float32 [n + 1])``, the
Gymnasium / PettingZoo convention: ``action_mask[a]`` is 1 where action a is allowed at this
step. ``observation`` shows a one-hot target action (random per episode) at t = 0 only, and its
last entry is 1 at t = L (the query), else 0.

At t < L each action is allowed with probability 1/2, and one random action always is; an
allowed action gives reward 0. At t = L exactly two actions are allowed, the target and a random
decoy: taking the target gives reward 1 and ``success`` 1, the decoy 0; either ends the episode
(``terminated=True``). A masked action ends the episode at once with reward -1 and ``success`` 0
and is counted in ``invalid_actions`` (int64 [N], per env, since construction); with
``strict=True`` it raises ``ValueError`` instead, for tests that must notice any. Memory horizon
L; a memoryless policy that respects the mask succeeds half the time.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs._base import BatchedEnv, SingleEnv
from envs.tmaze import check_positive_int


class MaskedRecallVector(BatchedEnv):
    """Batched masked recall; SAME_STEP autoreset (see BatchedEnv).

    Args:
        num_envs: N.
        length: L >= 1, steps between the target's cue and the query.
        num_actions: n >= 2.
        strict: raise ValueError on a masked action instead of ending the episode.
        seed: env i uses seed + i on the first reset.
        render_mode: None or "rgb_array".

    Observations {"action_mask": int8 [N, n], "observation": float32 [N, n + 1]}; actions int [N].
    """

    def __init__(self, num_envs: int, length: int = 3, num_actions: int = 4, strict: bool = False,
                 seed: int | None = None, render_mode: str | None = None) -> None:
        self.length = check_positive_int("length", length)
        self.num_actions = check_positive_int("num_actions", num_actions, minimum=2)
        self.strict = bool(strict)
        n = self.num_actions
        obs_space = spaces.Dict({"action_mask": spaces.Box(0, 1, (n,), np.int8),
                                 "observation": spaces.Box(0.0, 1.0, (n + 1,), np.float32)})
        super().__init__(num_envs, obs_space, spaces.Discrete(n), seed, render_mode)
        self.episode_length = self.length + 1
        N = self.num_envs
        self._t = np.zeros(N, dtype=np.int64)  # [N] steps taken this episode
        self._target = np.zeros(N, dtype=np.int64)  # [N]
        self._decoy = np.zeros(N, dtype=np.int64)  # [N] != target
        self._allowed = np.ones((N, n), dtype=bool)  # [N, n] this step's mask
        self.invalid_actions = np.zeros(N, dtype=np.int64)  # [N] masked actions taken

    def _draw_mask(self, idx: np.ndarray) -> None:
        n, t = self.num_actions, self._t[idx]
        u = self._uniform(idx, 1 + t.astype(np.uint64), n + 1)  # [K, n + 1], one stream a step
        allowed = u[:, :n] < 0.5
        allowed[np.arange(len(idx)), (u[:, n] * n).astype(np.int64)] = True
        query = t == self.length
        allowed[query] = False
        allowed[np.flatnonzero(query), self._target[idx][query]] = True
        allowed[np.flatnonzero(query), self._decoy[idx][query]] = True
        self._allowed[idx] = allowed

    def _reset_envs(self, idx: np.ndarray) -> None:
        n = self.num_actions
        u = self._uniform(idx, 0, 2)  # [K, 2]
        self._target[idx] = (u[:, 0] * n).astype(np.int64)
        self._decoy[idx] = (self._target[idx] + 1 + (u[:, 1] * (n - 1)).astype(np.int64)) % n
        self._t[idx] = 0
        self._draw_mask(idx)

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        allowed = self._allowed[self._all, actions]
        if self.strict and not allowed.all():
            i = int(np.flatnonzero(~allowed)[0])
            raise ValueError(f"env {i} took masked action {int(actions[i])} at step {self._t[i]} "
                             f"(allowed: {np.flatnonzero(self._allowed[i]).tolist()})")
        self.invalid_actions += ~allowed
        query = self._t == self.length
        success = (allowed & query & (actions == self._target)).astype(np.float32)
        reward = np.where(allowed, success, -1.0).astype(np.float32)
        terminated = query | ~allowed
        self._t += 1
        self._draw_mask(self._all)
        return reward, terminated, success

    def _observe(self, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
        sl = slice(None) if idx is None else idx
        t, n = self._t[sl], self.num_actions
        obs = np.zeros((len(t), n + 1), dtype=np.float32)  # [K, n + 1]
        obs[np.arange(len(t)), self._target[sl]] = t == 0
        obs[:, n] = t == self.length
        return {"action_mask": self._allowed[sl].astype(np.int8), "observation": obs}

    def _render_env(self, i: int, cell: int = 16) -> np.ndarray:
        """Top row: the observation (cue blue, query white); bottom row: the mask (allowed green,
        masked red). uint8 [2 cell, (n + 1) cell, 3]."""
        obs = self._observe(np.array([i]))
        img = np.zeros((2, self.num_actions + 1, 3), dtype=np.uint8)
        img[0, :-1, 2] = 255 * obs["observation"][0, :-1]
        img[0, -1] = 255 * obs["observation"][0, -1]
        img[1, :-1] = np.where(obs["action_mask"][0, :, None] > 0, [0, 200, 0], [200, 0, 0])
        return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)


class MaskedRecallEnv(SingleEnv):
    """Single masked recall (``urlstm/MaskedRecall-v0``, kwargs ``length``, ``num_actions``,
    ``strict``)."""

    batched_cls = MaskedRecallVector

    def __init__(self, length: int = 3, num_actions: int = 4, strict: bool = False,
                 render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode, length=length, num_actions=num_actions,
                         strict=strict)

    @property
    def invalid_actions(self) -> int:
        """Masked actions taken since construction."""
        return int(self._core.invalid_actions[0])
