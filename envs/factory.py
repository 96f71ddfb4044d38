"""``envs.make``: one way to build any environment as a SAME_STEP-autoreset vector env.

Native ids (``urlstm/...`` or their short aliases) give the batched numpy implementation; any other
Gymnasium id (MiniGrid, POPGym, classic control, ...) is built with ``gymnasium.vector``'s
``AsyncVectorEnv``, one worker process per env (``SyncVectorEnv`` when ``vectorization="sync"``, or
when ``num_envs == 1`` unless ``vectorization="async"``; a few processes each stepping a slice of the
envs when ``vectorization="shards"``: ``envs/sharded.py``) and wrapped
so that it gives the same ``info`` keys as the native envs. MiniGrid envs compute their view with
numpy (``envs/minigrid_view.py``: the same observations, about 3x faster steps).
"""

from __future__ import annotations

import importlib
import inspect
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from envs._base import BatchedEnv
from envs.masked_recall import MaskedRecallVector
from envs.memory_chain import MemoryChainVector
from envs.minigrid_view import FastView
from envs.sharded import ShardedVectorEnv, usable_cores
from envs.tmaze import TMazeActiveVector, TMazePassiveVector
from envs.visual_match import VisualMatchActiveVector, VisualMatchPassiveVector

NATIVE: dict[str, type[BatchedEnv]] = {
    "urlstm/TMazePassive-v0": TMazePassiveVector,
    "urlstm/TMazeActive-v0": TMazeActiveVector,
    "urlstm/MemoryChain-v0": MemoryChainVector,
    "urlstm/VisualMatchPassive-v0": VisualMatchPassiveVector,
    "urlstm/VisualMatchActive-v0": VisualMatchActiveVector,
    "urlstm/MaskedRecall-v0": MaskedRecallVector,
}
ALIASES: dict[str, str] = {
    "tmaze-passive": "urlstm/TMazePassive-v0",
    "tmaze-active": "urlstm/TMazeActive-v0",
    "memory-chain": "urlstm/MemoryChain-v0",
    "visual-match-passive": "urlstm/VisualMatchPassive-v0",
    "visual-match-active": "urlstm/VisualMatchActive-v0",
    "masked-recall": "urlstm/MaskedRecall-v0",
}
# id prefix -> (module that registers those ids on import, what to install)
_PACKAGES = {
    "MiniGrid-": ("minigrid", "pip install minigrid"),
    "BabyAI-": ("minigrid", "pip install minigrid"),
    "popgym-": ("popgym", 'pip install popgym  (or pip install "urlstm[popgym]")'),
}
_OBS_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_ACT_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete)


def make(env_id: str, num_envs: int, seed: int | None = None, **kwargs: Any) -> VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as one vector env with SAME_STEP autoreset.

    Args:
        env_id: a native id (``urlstm/TMazePassive-v0``, ``urlstm/TMazeActive-v0``,
            ``urlstm/MemoryChain-v0``, ``urlstm/VisualMatchPassive-v0``,
            ``urlstm/VisualMatchActive-v0``, ``urlstm/MaskedRecall-v0``, or an alias from
            ``ALIASES``) or any Gymnasium id.
        num_envs: N >= 1.
        seed: env i uses seed + i at the first ``reset()`` (which then needs no seed); the action
            space is seeded with it too. None: random.
        **kwargs: task parameters (``length=``, ``num_bits=``, ``distractor_steps=``, or the kwargs
            of ``gym.make`` for other ids), plus ``vectorization="sync"`` / ``"async"`` /
            ``"shards"`` to build any id (native ones included) from single envs in gymnasium's
            vector envs or in this process and ``workers=K`` others (default: one fewer than the
            usable cores, or than the envs), and for
            MiniGrid ``fast_view=False`` to keep MiniGrid's own (slower, identical) view code.

    Returns:
        A ``gymnasium.vector.VectorEnv``; obs/rewards/terminated/truncated have a leading [N] axis;
        ``info`` holds ``final_obs``, ``episode`` ({"r": float32 [N], "l": int32 [N]}) and, where
        the task defines it, ``success`` (float32 [N]), each with its ``_key`` bool [N] mask.

    Raises:
        ValueError: unknown id, bad ``num_envs`` or kwargs, unsupported spaces.
        ImportError: the package that provides the id is missing (the message says what to install).
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    vectorization = kwargs.pop("vectorization", None)
    fast_view = kwargs.pop("fast_view", True)
    workers = kwargs.pop("workers", None)
    if vectorization not in (None, "sync", "async", "shards"):
        raise ValueError(f'vectorization must be "sync", "async" or "shards", got {vectorization!r}')
    if workers is not None and vectorization != "shards":
        raise ValueError(f'workers={workers!r} needs vectorization="shards"')
    env_id = ALIASES.get(env_id, env_id)
    if env_id in NATIVE and vectorization is None:
        return _make_native(env_id, int(num_envs), seed, kwargs)
    _ensure_registered(env_id)
    probe = _make_single(env_id, kwargs, fast_view)  # fail here, in this process, with a clear message
    try:
        _check_spaces(env_id, probe.observation_space, probe.action_space)
    finally:
        probe.close()
    fns = [partial(_make_single, env_id, kwargs, fast_view) for _ in range(num_envs)]
    if vectorization == "shards":
        venv = ShardedVectorEnv(fns, min(num_envs, usable_cores()) - 1 if workers is None else workers)
    elif vectorization == "sync" or (num_envs == 1 and vectorization is None):
        venv = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    else:
        venv = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return EpisodeInfo(venv, seed)


def _make_native(env_id: str, num_envs: int, seed: int | None, kwargs: dict) -> VectorEnv:
    cls = NATIVE[env_id]
    params = list(inspect.signature(cls.__init__).parameters)[2:]  # after self, num_envs
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = [p for p in params if p != "seed"] + ["vectorization"]
        raise ValueError(f"{env_id} got unexpected kwargs {unknown}; it accepts {accepted}")
    try:
        return cls(num_envs, seed=seed, **kwargs)
    except ValueError as e:
        raise ValueError(f"{env_id}: {e}") from None


def _ensure_registered(env_id: str) -> None:
    """Import the package that registers ``env_id``; raise ValueError/ImportError if it can't be."""
    for prefix, (module, install) in _PACKAGES.items():
        if env_id.startswith(prefix) and env_id not in gym.registry:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ImportError(
                    f"environment {env_id!r} needs the package {module!r}: {install}"
                ) from None
    if env_id not in gym.registry:
        try:
            gym.spec(env_id)  # resolves unversioned ids, suggests close names
        except gym.error.Error as e:
            raise ValueError(
                f"unknown environment id {env_id!r} ({e}). Native ids: {sorted(NATIVE)} "
                f"(aliases {sorted(ALIASES)}); other Gymnasium ids (MiniGrid-*, popgym-*, ...) "
                "work when their package is installed."
            ) from None


def _make_single(env_id: str, kwargs: dict, fast_view: bool = True) -> gym.Env:
    """One env with the adapters it needs (runs in worker processes: module-level, picklable)."""
    _ensure_registered(env_id)  # a spawned worker has not imported minigrid/popgym yet
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise ImportError(f"environment {env_id!r} needs a missing package: {e}") from None
    except TypeError as e:
        raise ValueError(f"invalid kwargs {sorted(kwargs)} for {env_id!r}: {e}") from None
    if env_id.startswith(("MiniGrid-", "BabyAI-")):
        from minigrid.minigrid_env import MiniGridEnv

        cls = type(env.unwrapped)
        if fast_view and cls.gen_obs is MiniGridEnv.gen_obs and cls.__module__.startswith("minigrid."):
            env = FastView(env)  # MiniGrid's own tasks (all tested identical); others keep their view
        env = MiniGridSuccess(gym.wrappers.FilterObservation(env, ["image", "direction"]))
    elif isinstance(env.observation_space, spaces.Tuple):
        env = _tuple_to_dict(env)
    return env


def _tuple_to_dict(env: gym.Env) -> gym.Env:
    """Tuple observations (e.g. POPGym Autoencode) become a Dict with keys "0", "1", ..."""
    n = len(env.observation_space.spaces)
    keys = [str(i).zfill(len(str(n - 1))) for i in range(n)]
    space = spaces.Dict(dict(zip(keys, env.observation_space.spaces)))
    return gym.wrappers.TransformObservation(env, lambda obs: dict(zip(keys, obs)), space)


def _check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    subspaces = obs_space.spaces.values() if isinstance(obs_space, spaces.Dict) else [obs_space]
    if not all(isinstance(s, _OBS_SPACES) for s in subspaces):
        raise ValueError(
            f"{env_id}: observation space {obs_space} is not supported "
            "(Box, Discrete, MultiDiscrete, MultiBinary, or a Dict of those)"
        )
    if not isinstance(act_space, _ACT_SPACES):
        raise ValueError(
            f"{env_id}: action space {act_space} is not supported (Discrete, MultiDiscrete, Box)"
        )


class MiniGridSuccess(gym.Wrapper):
    """Adds ``info["success"]`` at episode end: 1.0 if the episode terminated with reward > 0."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = {**info, "success": float(terminated and reward > 0)}
        return obs, reward, terminated, truncated, info


class EpisodeInfo(VectorWrapper):
    """Gives a gymnasium SAME_STEP vector env the native envs' ``info`` keys and seeding.

    Adds ``episode`` ({"r": float32 [N], "l": int32 [N]}) and ``_episode`` where an episode ended,
    and lifts ``final_info["success"]`` (reported by single envs at their last step) to
    ``success``/``_success``. The first ``reset()`` without a seed uses the ``seed`` given here.
    """

    def __init__(self, env: VectorEnv, seed: int | None = None) -> None:
        super().__init__(env)
        self._seed = seed
        self._seeded = False
        self._returns = np.zeros(self.num_envs, dtype=np.float64)  # [N]
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)  # [N]

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is None and not self._seeded:
            seed = self._seed
        if isinstance(seed, (int, np.integer)):
            self.env.action_space.seed(int(seed))
        self._seeded = True
        obs, info = self.env.reset(seed=seed, options=options)
        mask = None if options is None else options.get("reset_mask")
        self._returns[mask if mask is not None else slice(None)] = 0.0
        self._lengths[mask if mask is not None else slice(None)] = 0
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self._returns += reward
        self._lengths += 1
        done = np.logical_or(terminated, truncated)
        if done.any():
            info["episode"] = {
                "r": np.where(done, self._returns, 0.0).astype(np.float32),
                "l": np.where(done, self._lengths, 0).astype(np.int32),
            }
            info["_episode"] = done
            final_info = info.get("final_info", {})
            if "success" in final_info:
                mask = final_info["_success"] & done
                info["success"] = np.where(mask, final_info["success"], 0.0).astype(np.float32)
                info["_success"] = mask
            self._returns[done] = 0.0
            self._lengths[done] = 0
        return obs, reward, terminated, truncated, info
