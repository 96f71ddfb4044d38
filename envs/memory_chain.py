"""Memory chain (after bsuite ``memory_len`` / ``memory_size``).

An episode has L + 1 steps. Observation float32 [n + 2] at time t = 0..L is
``[1 - t/L, query, context...]``: the n context bits (each -1 or +1, random per episode) are shown
only at t = 0, the query (an index in 0..n-1, random per episode, shown as a float as bsuite does)
only at t = L; both are 0 otherwise. Actions ``Discrete(2)``: action 1 answers +1, action 0 answers
-1. The action taken after seeing the query (the (L+1)-th) gets reward +1 if it equals
``context[query]`` (``success``) and -1 otherwise and ends the episode (``terminated=True``);
earlier actions get 0. Memory horizon L, capacity n; chance is 50%.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs._base import BatchedEnv, SingleEnv
from envs.tmaze import check_positive_int


class MemoryChainVector(BatchedEnv):
    """Batched memory chain; SAME_STEP autoreset (see BatchedEnv).

    Args:
        num_envs: N.
        length: memory length L >= 1 (steps between the context and the query).
        num_bits: number of context bits n >= 1.
        seed: env i uses seed + i on the first reset.
        render_mode: None or "rgb_array".

    Observations float32 [N, n + 2]; actions int [N] in {0, 1}.
    """

    def __init__(
        self,
        num_envs: int,
        length: int = 50,
        num_bits: int = 1,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.length = check_positive_int("length", length)
        self.num_bits = check_positive_int("num_bits", num_bits)
        low = np.full(self.num_bits + 2, -1.0, dtype=np.float32)
        high = np.full(self.num_bits + 2, 1.0, dtype=np.float32)
        low[0], high[1] = -1.0 / self.length, self.num_bits - 1  # time after the answer; query
        obs_space = spaces.Box(low, high, dtype=np.float32)
        super().__init__(num_envs, obs_space, spaces.Discrete(2), seed, render_mode)
        n = self.num_envs
        self._t = np.zeros(n, dtype=np.int64)  # [N] steps taken
        self._context = np.zeros((n, self.num_bits), dtype=np.float32)  # [N, n] of +-1
        self._query = np.zeros(n, dtype=np.int64)  # [N]
        self._answer = np.zeros(n, dtype=np.int64)  # [N] correct action, context[query] > 0

    def _reset_envs(self, idx: np.ndarray) -> None:
        u = self._uniform(idx, 0, self.num_bits + 1)  # [K, n + 1]
        context = np.where(u[:, : self.num_bits] < 0.5, -1.0, 1.0).astype(np.float32)
        query = (u[:, self.num_bits] * self.num_bits).astype(np.int64)
        self._t[idx] = 0
        self._context[idx] = context
        self._query[idx] = query
        self._answer[idx] = context[np.arange(len(idx)), query] > 0

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._t += 1
        terminated = self._t > self.length
        success = (actions == self._answer).astype(np.float32)
        reward = np.where(terminated, 2.0 * success - 1.0, 0.0).astype(np.float32)
        return reward, terminated, success

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        sl = slice(None) if idx is None else idx
        t = self._t[sl]
        obs = np.zeros((len(t), self.num_bits + 2), dtype=np.float32)  # [N, n + 2]
        obs[:, 0] = 1.0 - t / self.length
        obs[:, 1] = self._query[sl] * (t == self.length)
        obs[:, 2:] = self._context[sl] * (t == 0)[:, None]
        return obs

    def _render_env(self, i: int, cell: int = 16) -> np.ndarray:
        """Top row: the observation (time left grey, query blue, bits green +1 / red -1); bottom
        row: the hidden context, the queried bit framed in white. uint8 [2 cell, (n + 2) cell, 3]."""
        obs = self._observe(np.array([i]))[0]
        img = np.zeros((2, self.num_bits + 2, 3), dtype=np.float64)
        img[0, 0] = max(obs[0], 0.0)
        img[0, 1, 2] = (obs[1] + 1) / self.num_bits if self._t[i] == self.length else 0.0
        for row, bits in ((0, obs[2:]), (1, self._context[i])):
            img[row, 2:, 0] = bits < 0
            img[row, 2:, 1] = bits > 0
        img = np.repeat(np.repeat((img * 200).astype(np.uint8), cell, 0), cell, 1)
        q = (2 + self._query[i]) * cell
        img[cell:, q : q + cell][[0, -1]] = 255
        img[cell:, q : q + cell][:, [0, -1]] = 255
        return img


class MemoryChainEnv(SingleEnv):
    """Single memory chain (``urlstm/MemoryChain-v0``, kwargs ``length``, ``num_bits``)."""

    batched_cls = MemoryChainVector

    def __init__(self, length: int = 50, num_bits: int = 1, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode, length=length, num_bits=num_bits)
