"""Memory tasks: batched native envs registered under ``urlstm/``; ``make`` for any Gymnasium id.

``envs.make(env_id, num_envs, seed=None, **kwargs)`` returns a ``gymnasium.vector.VectorEnv`` with
SAME_STEP autoreset; see :mod:`envs.factory`. Single-env versions of the native tasks are registered
with Gymnasium (``gym.make("urlstm/TMazePassive-v0", length=100)``), and their batched versions as
vector entry points (``gym.make_vec(..., vectorization_mode="vector_entry_point")``).
"""

import gymnasium as gym

from envs.factory import ALIASES, NATIVE, make

_SINGLE = {
    "urlstm/TMazePassive-v0": ("envs.tmaze:TMazePassiveEnv", {"length": 50}),
    "urlstm/TMazeActive-v0": ("envs.tmaze:TMazeActiveEnv", {"length": 50}),
    "urlstm/MemoryChain-v0": ("envs.memory_chain:MemoryChainEnv", {"length": 50, "num_bits": 1}),
    "urlstm/VisualMatchPassive-v0": (
        "envs.visual_match:VisualMatchPassiveEnv", {"distractor_steps": 60}),
    "urlstm/VisualMatchActive-v0": (
        "envs.visual_match:VisualMatchActiveEnv", {"distractor_steps": 60}),
    "urlstm/MaskedRecall-v0": ("envs.masked_recall:MaskedRecallEnv", {"length": 3, "num_actions": 4}),
}
for _id, (_entry, _kwargs) in _SINGLE.items():
    if _id not in gym.registry:
        _cls = NATIVE[_id]
        gym.register(
            _id,
            entry_point=_entry,
            vector_entry_point=f"{_cls.__module__}:{_cls.__name__}",
            kwargs=_kwargs,
        )

NATIVE_IDS: tuple[str, ...] = tuple(NATIVE)
__all__ = ["make", "NATIVE_IDS", "ALIASES"]
