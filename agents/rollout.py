"""Rollouts: what every learner, actor, checkpoint and evaluation shares between a vector env and
the policy.

``Rollout`` (time-major storage) and ``collect`` (fill it by stepping the envs with the policy), the
carry from one rollout into the next and the first carry of a run, policy actions -> env actions,
batched observations, episode statistics and the time spent per activity. Imports nothing from the
learners, so ``ppo``, ``impala``, the actors, ``checkpoint`` and ``evaluate`` all import it.

Termination and truncation stay apart: a truncated episode bootstraps from the value of its final
observation computed with the memory after the step (``final_values``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policies.actor_critic import ActorCritic, obs_to_tensor, obs_zeros, tree_map

State = tuple[torch.Tensor, ...]


@dataclass
class Carry:
    """What flows from one rollout into the next: the current observation and memory."""

    obs: Any                    # [B, ...] tensor tree
    reset: torch.Tensor         # [B] bool: obs starts an episode
    prev_action: torch.Tensor   # [B, *action_shape]
    prev_reward: torch.Tensor   # [B]
    state: State                # core state before obs


def initial_carry(policy: ActorCritic, venv, seed: int, device: torch.device) -> Carry:
    """Reset ``venv`` with ``seed``: every env starts an episode with an empty memory."""
    obs, _ = venv.reset(seed=seed)
    B = venv.num_envs
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
            returns, lengths = info["episode"]["r"][m], info["episode"]["l"][m]
            self.new_returns += returns.tolist()
            self.new_lengths += lengths.tolist()
            self.episodes += int(m.sum())
        if "_success" in info and info["_success"].any():
            self.new_successes += np.asarray(info["success"])[info["_success"]].tolist()

    def take_new(self) -> dict[str, list]:
        """The episodes that ended since the last flush, as ``{"r": returns, "l": lengths,
        "s": successes}``, taken out of this object (an actor sends them to the learner)."""
        out = {"r": self.new_returns, "l": self.new_lengths, "s": self.new_successes}
        self.new_returns, self.new_lengths, self.new_successes = [], [], []
        return out

    def add_new(self, eps: dict[str, list]) -> None:
        """Count the episodes of ``take_new`` (another object's) as ended here."""
        self.new_returns += eps["r"]
        self.new_lengths += eps["l"]
        self.new_successes += eps["s"]
        self.episodes += len(eps["r"])

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


@dataclass
class Rollout:
    """Time-major storage of ``num_steps`` steps of ``num_envs`` envs, filled by ``collect``.

    Built over given tensors (an IMPALA actor's views into a shared-memory slot) or allocated by
    ``Rollout.zeros``. ``states`` holds the core state before the first step of each of the
    K = num_steps / seq_len training sequences.
    """

    obs: Any                    # [T, B, ...] tensor tree
    reset: torch.Tensor         # [T, B] bool: obs[t] starts an episode
    prev_action: torch.Tensor   # [T, B, *action_shape]
    prev_reward: torch.Tensor   # [T, B]
    actions: torch.Tensor       # [T, B, *action_shape]
    logprobs: torch.Tensor      # [T, B]
    values: torch.Tensor        # [T, B]
    rewards: torch.Tensor       # [T, B]
    terminated: torch.Tensor    # [T, B] bool
    truncated: torch.Tensor     # [T, B] bool
    final_values: torch.Tensor  # [T, B] V(final obs) where an episode was truncated, else 0
    states: State               # each [K, *state_shape]: the opaque core state, batch B inside
    next_value: torch.Tensor    # [B] V(obs after the last step)
    seq_len: int                # steps per training sequence

    @classmethod
    def zeros(cls, policy: ActorCritic, num_steps: int, num_envs: int, seq_len: int,
              device: torch.device) -> Rollout:
        """Preallocated storage on ``device``; ``seq_len`` divides ``num_steps``."""
        T, B = num_steps, num_envs
        a_shape, a_dtype = policy.head.action_shape(), policy.head.action_dtype()

        def steps(*shape, dtype=None):
            return torch.zeros(T, B, *shape, dtype=dtype, device=device)

        return cls(obs=obs_zeros(policy.observation_space, (T, B), device),
                   reset=steps(dtype=torch.bool), prev_action=steps(*a_shape, dtype=a_dtype),
                   prev_reward=steps(), actions=steps(*a_shape, dtype=a_dtype), logprobs=steps(),
                   values=steps(), rewards=steps(), terminated=steps(dtype=torch.bool),
                   truncated=steps(dtype=torch.bool), final_values=steps(),
                   states=tuple(torch.zeros(T // seq_len, *s.shape, dtype=s.dtype, device=device)
                                for s in policy.initial_state(B, device)),
                   next_value=torch.zeros(B, device=device), seq_len=seq_len)

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]


@torch.inference_mode()
def collect(policy: ActorCritic, venv, ro: Rollout, carry: Carry, stats: EpisodeStats,
            timers: Timers) -> Carry:
    """Fill ``ro`` with ``ro.num_steps`` steps of every env of ``venv``, on ``ro``'s device.

    Returns:
        The carry for the next rollout (observation, reset flags, previous action and reward,
        core state after the last step).
    """
    obs_space, act_space = policy.observation_space, venv.single_action_space
    device, seq_len = ro.rewards.device, ro.seq_len
    obs, reset, state = carry.obs, carry.reset, carry.state
    prev_a, prev_r = carry.prev_action, carry.prev_reward
    t0 = time.perf_counter()
    env_time = 0.0
    for t in range(ro.num_steps):
        if t % seq_len == 0:
            for buf, s in zip(ro.states, state):
                buf[t // seq_len].copy_(s)
        tree_map(lambda buf, x, t=t: buf[t].copy_(x), ro.obs, obs)
        ro.reset[t] = reset
        ro.prev_action[t] = prev_a
        ro.prev_reward[t] = prev_r
        out = policy.act(obs, state, reset, prev_a, prev_r)
        ro.actions[t] = out.action
        ro.logprobs[t] = out.logprob
        ro.values[t] = out.value

        e0 = time.perf_counter()
        next_obs, reward, term, trunc, info = venv.step(env_actions(act_space, out.action))
        env_time += time.perf_counter() - e0

        reward_t = torch.as_tensor(reward, dtype=torch.float32).to(device, non_blocking=True)
        term_t = torch.as_tensor(term).to(device, non_blocking=True)
        trunc_t = torch.as_tensor(trunc).to(device, non_blocking=True)
        ro.rewards[t] = reward_t
        ro.terminated[t] = term_t
        ro.truncated[t] = trunc_t
        cut = np.logical_and(trunc, np.logical_not(term))
        if cut.any():
            # time limit: V(final obs) with the memory after this step, previous action/reward
            idx_np = np.flatnonzero(cut)
            idx = torch.as_tensor(idx_np, device=device)
            final = stack_obs(obs_space, [info["final_obs"][i] for i in idx_np])
            v = policy.value(obs_to_tensor(obs_space, final, device),
                             tuple(s[:, idx] for s in out.state),
                             torch.zeros(len(idx_np), dtype=torch.bool, device=device),
                             out.action[idx], reward_t[idx])
            ro.final_values[t].zero_()
            ro.final_values[t, idx] = v
        stats.add(info)

        obs = obs_to_tensor(obs_space, next_obs, device)
        reset = term_t | trunc_t
        prev_a, prev_r, state = out.action, reward_t, out.state
    ro.next_value.copy_(policy.value(obs, state, reset, prev_a, prev_r))
    timers.env += env_time
    timers.inference += time.perf_counter() - t0 - env_time
    return Carry(obs, reset, prev_a, prev_r, state)
