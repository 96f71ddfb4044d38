"""What every learner, checkpoint and evaluation shares between a vector env and the policy.

The carry from one rollout into the next, the first carry of a run, policy actions -> env actions,
batched observations, episode statistics and the time spent per activity. Imports nothing from the
learners, so ``ppo``, ``impala``, ``actors``, ``checkpoint`` and ``evaluate`` all import it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policies.actor_critic import ActorCritic, obs_to_tensor

State = tuple[torch.Tensor, ...]


@dataclass
class Carry:
    """What flows from one rollout into the next: the current observation and memory."""

    obs: Any                    # [B, ...] tensor tree
    reset: torch.Tensor         # [B] bool: obs starts an episode
    prev_action: torch.Tensor   # [B, *action_shape]
    prev_reward: torch.Tensor   # [B]
    state: State                # core state before obs


def initial_carry(policy: ActorCritic, venv, cfg, device: torch.device) -> Carry:
    """Reset ``venv`` with ``cfg.seed``: every env starts an episode with an empty memory."""
    obs, _ = venv.reset(seed=cfg.seed)
    B = cfg.num_envs
    return Carry(obs=obs_to_tensor(policy.observation_space, obs, device),
                 reset=torch.ones(B, dtype=torch.bool, device=device),
                 prev_action=torch.zeros(B, *policy.head.action_shape(), dtype=policy.head.action_dtype(),
                                         device=device),
                 prev_reward=torch.zeros(B, device=device),
                 state=policy.initial_state(B, device))


def env_actions(space: spaces.Space, action: torch.Tensor) -> np.ndarray:
    """Policy actions [B, ...] -> what the vector env takes (Discrete start added, Box clipped)."""
    a = action.cpu().numpy()
    if isinstance(space, spaces.Discrete):
        return a + space.start if space.start else a
    if isinstance(space, spaces.MultiDiscrete) and np.any(getattr(space, "start", 0)):
        return a + space.start
    if isinstance(space, spaces.Box):
        return np.clip(a, space.low, space.high).astype(space.dtype)
    return a


def stack_obs(space: spaces.Space, items: list) -> Any:
    """A list of single observations -> one batched numpy observation."""
    if isinstance(space, spaces.Dict):
        return {k: stack_obs(s, [o[k] for o in items]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(stack_obs(s, [o[i] for o in items]) for i, s in enumerate(space.spaces))
    return np.stack([np.asarray(o) for o in items])


class EpisodeStats:
    """Finished episodes: returns, lengths and success flags (numpy, no tensor syncs)."""

    def __init__(self, window: int = 100):
        self.returns: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.successes: deque[float] = deque(maxlen=window)
        self.new_returns: list[float] = []
        self.new_lengths: list[int] = []
        self.new_successes: list[float] = []
        self.episodes = 0

    def add(self, info: dict) -> None:
        if "_episode" in info and info["_episode"].any():
            m = info["_episode"]
            r, l = info["episode"]["r"][m], info["episode"]["l"][m]
            self.new_returns += r.tolist()
            self.new_lengths += l.tolist()
            self.episodes += int(m.sum())
        if "_success" in info and info["_success"].any():
            self.new_successes += np.asarray(info["success"])[info["_success"]].tolist()

    def flush(self) -> dict[str, float]:
        """Means over the episodes that finished since the last flush."""
        out = {}
        if self.new_returns:
            out["episodic_return"] = float(np.mean(self.new_returns))
            out["episodic_length"] = float(np.mean(self.new_lengths))
        if self.new_successes:
            out["success_rate"] = float(np.mean(self.new_successes))
        self.returns.extend(self.new_returns)
        self.lengths.extend(self.new_lengths)
        self.successes.extend(self.new_successes)
        self.new_returns, self.new_lengths, self.new_successes = [], [], []
        return out

    def recent(self) -> tuple[float | None, float | None]:
        ret = float(np.mean(self.returns)) if self.returns else None
        succ = float(np.mean(self.successes)) if self.successes else None
        return ret, succ

    def best_success(self, best: float | None, min_episodes: int = 20) -> float | None:
        """``best`` raised to the recent success rate, once that counts ``min_episodes`` episodes
        (or the whole window, if smaller)."""
        recent = self.recent()[1]
        if recent is None or len(self.successes) < min(min_episodes, self.successes.maxlen):
            return best
        return recent if best is None else max(best, recent)

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "lengths": list(self.lengths),
                "successes": list(self.successes), "episodes": self.episodes}

    def load_state_dict(self, d: dict) -> None:
        self.returns.extend(d["returns"])
        self.lengths.extend(d["lengths"])
        self.successes.extend(d["successes"])
        self.episodes = d["episodes"]


class Timers:
    """Seconds spent in env stepping, inference and learning (perf/ scalars)."""

    def __init__(self) -> None:
        self.env = self.inference = self.learn = 0.0

    def reset(self) -> None:
        self.env = self.inference = self.learn = 0.0
