"""Shared plumbing for the batched native tasks: counter-based randomness, autoreset, episode info.

A native task is written once, as a subclass of :class:`BatchedEnv` that holds the state of all
``num_envs`` environments in numpy arrays and implements four hooks (``_reset_envs``, ``_advance``,
``_observe``, ``_render_env``). The single-env ``gymnasium.Env`` of a task is :class:`SingleEnv`
driving a batch of one, so both share one transition function and one random stream.

Randomness is counter-based: every random number of env ``i`` is a hash of (seed_i, episode number,
stream, index). Env ``i`` of a batch seeded with ``seed`` therefore draws exactly what a single env
seeded with ``seed + i`` draws, whatever the other envs do, with no per-env generator objects and no
Python loop over envs.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def hash_uniform(
    keys: np.ndarray, episodes: np.ndarray, stream: np.ndarray | int, count: int
) -> np.ndarray:
    """Uniform floats in [0, 1) that depend only on (key, episode, stream, index).

    Args:
        keys: uint64 [K], the seed of each env.
        episodes: uint64 [K], the episode number of each env since its seed.
        stream: int or uint64 [K], which draw of the episode (distinct streams are independent).
        count: how many numbers per env.

    Returns:
        float64 [K, count].
    """
    h = _mix(_mix(keys) ^ episodes)
    h = _mix(h ^ np.asarray(stream, dtype=np.uint64))
    h = _mix(h[:, None] ^ np.arange(count, dtype=np.uint64)[None, :])
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def obs_rows(obs: np.ndarray | dict[str, np.ndarray], idx: np.ndarray) -> list:
    """Copies of the observations of envs ``idx`` (dicts of arrays for a Dict space)."""
    if isinstance(obs, dict):
        return [{k: v[i].copy() for k, v in obs.items()} for i in idx]
    return [obs[i].copy() for i in idx]


def set_obs_rows(obs: np.ndarray | dict[str, np.ndarray], idx: np.ndarray, new: Any) -> None:
    """Write the observations ``new`` ([K, ...] or a dict of them) into rows ``idx`` of ``obs``."""
    if isinstance(obs, dict):
        for k, v in obs.items():
            v[idx] = new[k]
    else:
        obs[idx] = new


def _random_seed() -> int:
    return int(np.random.SeedSequence().entropy) % (2**63)


class BatchedEnv(VectorEnv):
    """Base of the batched native tasks; follows ``AutoresetMode.SAME_STEP`` exactly.

    When env ``i`` ends at a step, that step returns the final reward/terminated/truncated, the
    first observation of the next episode in ``obs[i]``, and the final observation in
    ``info["final_obs"][i]`` (object array of length N, ``None`` elsewhere; mask
    ``info["_final_obs"]``), as gymnasium's ``SyncVectorEnv`` does. On such a step ``info`` also
    holds ``episode = {"r": float32 [N], "l": int32 [N]}``, ``success`` (float32 [N]) and their
    masks ``_episode`` / ``_success`` (bool [N]); on other steps ``info`` is ``{}``.

    Subclasses set ``single_observation_space``/``single_action_space`` through ``__init__`` and
    implement the hooks below. State arrays have a leading [N] axis.
    """

    metadata: dict[str, Any] = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["rgb_array"],
        "render_fps": 8,
    }

    def __init__(
        self,
        num_envs: int,
        observation_space: gym.Space,
        action_space: gym.spaces.Discrete,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)):
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self._num_actions = int(action_space.n)
        self._init_seed = seed
        self._seeded = False
        self._keys = np.zeros(self.num_envs, dtype=np.uint64)  # [N] seed of each env
        self._episodes = np.zeros(self.num_envs, dtype=np.uint64)  # [N] episodes since seeding
        self._returns = np.zeros(self.num_envs, dtype=np.float64)  # [N] running episode return
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)  # [N] running episode length
        self._all = np.arange(self.num_envs)

    # ---- hooks -------------------------------------------------------------------------------
    def _reset_envs(self, idx: np.ndarray) -> None:
        """Start a new episode in envs ``idx`` (int [K]); draw randomness with :meth:`_uniform`."""
        raise NotImplementedError

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply int64 [N] actions to every env.

        Returns:
            reward float32 [N], terminated bool [N], success float32 [N] (read where terminated).
        """
        raise NotImplementedError

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """Observations of all envs ([N, *obs_shape]) or of envs ``idx`` ([K, *obs_shape]); a
        dict of such arrays for a Dict observation space."""
        raise NotImplementedError

    def _render_env(self, i: int) -> np.ndarray:
        """RGB frame (uint8 [H, W, 3]) of env ``i``."""
        raise NotImplementedError

    # ---- randomness --------------------------------------------------------------------------
    def _uniform(self, idx: np.ndarray, stream: np.ndarray | int, count: int) -> np.ndarray:
        """float64 [K, count] uniforms for envs ``idx`` in this episode (see hash_uniform)."""
        return hash_uniform(self._keys[idx], self._episodes[idx], stream, count)

    def _set_seeds(self, seed: int | Sequence[int] | None) -> None:
        if seed is None:
            seed = _random_seed()
        if isinstance(seed, (int, np.integer)):
            seeds = int(seed) + np.arange(self.num_envs, dtype=object)
        else:
            seeds = np.asarray(list(seed), dtype=object)
            if seeds.shape != (self.num_envs,):
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        self._keys = np.array([int(s) % 2**64 for s in seeds], dtype=np.uint64)
        self._episodes[:] = 0
        self._seeded = True

    # ---- VectorEnv API -----------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes in all envs (or in ``options["reset_mask"]``, bool [N]).

        ``seed`` (int: env i gets seed + i; or a list of N ints) restarts the random streams.
        Without it, the first reset uses the ``seed`` given at construction (random if none) and
        later resets continue each env's sequence of episodes.

        Returns:
            obs [N, *obs_shape] and an empty info dict.
        """
        mask = None if options is None else options.get("reset_mask")
        if seed is not None or not self._seeded:
            self._set_seeds(seed if seed is not None else self._init_seed)
            self._seed_spaces(seed if seed is not None else self._init_seed)
            mask = None
        else:
            sel = self._all if mask is None else np.flatnonzero(mask)
            self._episodes[sel] += np.uint64(1)
        idx = self._all if mask is None else np.flatnonzero(mask)
        self._reset_envs(idx)
        self._returns[idx] = 0.0
        self._lengths[idx] = 0
        return self._observe(), {}

    def _seed_spaces(self, seed: int | Sequence[int] | None) -> None:
        if isinstance(seed, (int, np.integer)):
            self.action_space.seed(int(seed))
            self.observation_space.seed(int(seed))

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all envs with ``actions`` (int [N]); autoreset as described in the class docstring.

        Returns:
            obs [N, *obs_shape], reward float32 [N], terminated bool [N], truncated bool [N], info.
        """
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            a = a.reshape(self.num_envs)
        if a.dtype != np.int64:
            a = a.astype(np.int64)
        if a.min() < 0 or a.max() >= self._num_actions:
            raise ValueError(f"actions must be in [0, {self._num_actions}), got {actions}")
        reward, terminated, success = self._advance(a)
        self._returns += reward
        self._lengths += 1
        truncated = np.zeros(self.num_envs, dtype=bool)
        obs = self._observe()
        if not terminated.any():
            return obs, reward, terminated, truncated, {}
        done = terminated.copy()
        idx = np.flatnonzero(done)
        final = np.empty(self.num_envs, dtype=object)
        for i, row in zip(idx, obs_rows(obs, idx)):
            final[i] = row
        info = {
            "final_obs": final,
            "_final_obs": done,
            "episode": {
                "r": np.where(done, self._returns, 0.0).astype(np.float32),
                "l": np.where(done, self._lengths, 0).astype(np.int32),
            },
            "_episode": done.copy(),
            "success": np.where(done, success, 0.0).astype(np.float32),
            "_success": done.copy(),
        }
        self._episodes[idx] += np.uint64(1)
        self._returns[idx] = 0.0
        self._lengths[idx] = 0
        self._reset_envs(idx)
        set_obs_rows(obs, idx, self._observe(idx))
        return obs, reward, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """RGB frames (uint8 [H, W, 3]) of every env, as gymnasium's vector envs return them."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(self._render_env(i) for i in range(self.num_envs))


class SingleEnv(gym.Env):
    """Single-env view of a :class:`BatchedEnv` task: the same transition function on a batch of 1.

    Subclasses set ``batched_cls``. ``reset(seed=s)`` draws the episodes that env ``i`` of a batch
    seeded with ``s - i`` draws; ``reset()`` moves on to the next episode. No autoreset.
    """

    batched_cls: type[BatchedEnv]
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.render_mode = render_mode
        self._core = self.batched_cls(num_envs=1, **kwargs)
        self.observation_space = self._core.single_observation_space
        self.action_space = self._core.single_action_space
        self._episode_started = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        core = self._core
        if seed is not None:
            core._set_seeds([seed])
        elif not core._seeded:
            core._set_seeds([int(self.np_random.integers(2**63))])
        elif self._episode_started:
            core._episodes += np.uint64(1)
        self._episode_started = True
        core._reset_envs(core._all)
        return obs_rows(core._observe(), [0])[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.int64).reshape(1)
        if not 0 <= a[0] < self._core._num_actions:
            raise ValueError(f"action must be in [0, {self._core._num_actions}), got {action!r}")
        reward, terminated, success = self._core._advance(a)
        obs = obs_rows(self._core._observe(), [0])[0]
        done = bool(terminated[0])
        info = {"success": float(success[0])} if done else {}
        return obs, float(reward[0]), done, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._core._render_env(0)
