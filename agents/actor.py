"""IMPALA's actors, whatever carries their unrolls: the unroll slots, the actor (its envs, a CPU
copy of the policy, the carry between unrolls) and the interface of a pool of actors as the learner
sees it (``ActorPool``).

Two transports implement the pool (on ``SlotBook``, the bookkeeping they share) and depend on this
module, one way: ``agents.local_actors``
(actor processes on this machine, slots in shared memory, TorchBeast's design) and
``agents.ray_actors`` (Ray actors, on one machine or a cluster); ``agents.impala.make_pool`` picks
one.

A slot holds T + 1 observations (the last one is only bootstrapped from), the behaviour policy's
log-probabilities, the recurrent state at the unroll's start (an opaque tuple, never looked into)
and the policy version that acted. An actor fills it with ``agents.rollout.collect`` writing into
the slot's ``Rollout`` (views into the slot); the recurrent state, observation and episode carry on
from one unroll to the next, and resets inside an unroll are recorded per step.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from agents.config import TrainConfig
from agents.rollout import EpisodeStats, Rollout, Timers, collect, initial_carry
from policies.actor_critic import ActorCritic, obs_zeros, tree_map

MAX_CONSECUTIVE_FAILURES = 3  # an actor dying this often in a row without one unroll stops the run


class ActorFailedError(RuntimeError):
    """An actor keeps dying before it produces anything (e.g. its environment cannot be built)."""


# ---------------------------------------------------------------------------------------------
# unroll slots
# ---------------------------------------------------------------------------------------------

class Buffers:
    """``num_buffers`` preallocated unroll slots (CPU), in shared memory unless ``shared`` is
    off."""

    def __init__(self, policy: ActorCritic, num_buffers: int, unroll_length: int,
                 envs_per_actor: int, shared: bool = True):
        N, T, B = num_buffers, unroll_length, envs_per_actor
        a_shape, a_dtype = policy.head.action_shape(), policy.head.action_dtype()
        self.obs = obs_zeros(policy.observation_space, (N, T + 1, B), "cpu")      # [N, T+1, B, ...]
        self.reset = torch.zeros(N, T + 1, B, dtype=torch.bool)                    # [N, T+1, B]
        self.prev_action = torch.zeros(N, T + 1, B, *a_shape, dtype=a_dtype)       # [N, T+1, B, .]
        self.prev_reward = torch.zeros(N, T + 1, B)                                # [N, T+1, B]
        self.actions = torch.zeros(N, T, B, *a_shape, dtype=a_dtype)               # [N, T, B, ...]
        self.logprobs = torch.zeros(N, T, B)                                       # [N, T, B] mu
        self.rewards = torch.zeros(N, T, B)                                        # [N, T, B]
        self.terminated = torch.zeros(N, T, B, dtype=torch.bool)                   # [N, T, B]
        self.truncated = torch.zeros(N, T, B, dtype=torch.bool)                    # [N, T, B]
        self.final_values = torch.zeros(N, T, B)                                   # [N, T, B]
        # core state before the unroll's first step: each [N, 1, *state_shape]
        self.states = tuple(torch.zeros(N, 1, *s.shape, dtype=s.dtype)
                            for s in policy.initial_state(B, "cpu"))
        self.version = torch.zeros(N, dtype=torch.long)                            # [N] who acted
        if shared:
            for x in self.tensors():
                x.share_memory_()

    def tensors(self) -> list[torch.Tensor]:
        """Every slot tensor, [N, ...] each, in a fixed order (a slot travels as ``x[slot]``)."""
        leaves: list[torch.Tensor] = []
        tree_map(leaves.append, self.obs)
        return leaves + [self.reset, self.prev_action, self.prev_reward, self.actions,
                         self.logprobs,
                         self.rewards, self.terminated, self.truncated, self.final_values,
                         *self.states, self.version]

    def rollout(self, i: int, values: torch.Tensor, next_value: torch.Tensor) -> Rollout:
        """Steps 0..T-1 of slot ``i`` as the ``Rollout`` that ``collect`` fills (views into this
        memory, one training sequence). ``values`` [T, B] and ``next_value`` [B] are the actor's
        own: the learner recomputes them."""
        T = self.actions.shape[1]
        return Rollout(obs=tree_map(lambda x: x[i, :T], self.obs), reset=self.reset[i, :T],
                       prev_action=self.prev_action[i, :T], prev_reward=self.prev_reward[i, :T],
                       actions=self.actions[i], logprobs=self.logprobs[i], values=values,
                       rewards=self.rewards[i], terminated=self.terminated[i],
                       truncated=self.truncated[i], final_values=self.final_values[i],
                       states=tuple(s[i] for s in self.states), next_value=next_value, seq_len=T)


# ---------------------------------------------------------------------------------------------
# actor
# ---------------------------------------------------------------------------------------------

def make_actor_envs(cfg: TrainConfig, num_envs: int, seed: int):
    """The actor's envs: in-process (sync) vector envs; the actor processes are the parallelism."""
    import envs
    from envs.factory import ALIASES, NATIVE

    kwargs = dict(cfg.env_kwargs)
    if ALIASES.get(cfg.env, cfg.env) not in NATIVE or "vectorization" in kwargs:
        kwargs["vectorization"] = "sync"  # daemonic actors cannot have worker processes
    return envs.make(cfg.env, num_envs, seed, **kwargs)


def make_actor_policy(cfg: TrainConfig, venv) -> ActorCritic:
    """The config's actor-critic for the env's spaces, on the CPU."""
    return ActorCritic(venv.single_observation_space, venv.single_action_space, core=cfg.core,
                       hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                       embed_size=cfg.embed_size, prev_action_reward=cfg.prev_action_reward,
                       head_gain=cfg.policy_head_gain, learn_initial_state=cfg.learn_initial_state)


def actor_seed(cfg: TrainConfig, seed_offset: int, index: int, generation: int) -> int:
    """Seed of actor ``index``'s envs and RNG: disjoint per actor, fresh after each restart."""
    B = cfg.num_envs // cfg.num_actors
    return cfg.seed + seed_offset + index * B + generation * 7919 * cfg.num_envs


class Actor:
    """What one actor holds, whatever carries its unrolls: its ``num_envs / num_actors`` envs, a
    CPU copy of the policy and the carry (observation, memory, episode) from one unroll into the
    next.

    ``unroll`` writes T steps of the B envs into a slot of a ``Buffers``; the process transport
    writes into shared memory, the Ray transport into a private one-slot buffer it returns.
    """

    def __init__(self, cfg: TrainConfig, seed: int):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        B, T = cfg.num_envs // cfg.num_actors, cfg.unroll_length
        self.venv = make_actor_envs(cfg, B, seed)
        self.policy = make_actor_policy(cfg, self.venv)
        self.policy.eval()
        self.carry = initial_carry(self.policy, self.venv, seed, torch.device("cpu"))
        self.stats, self.timers = EpisodeStats(), Timers()
        self.values, self.next_value = torch.zeros(T, B), torch.zeros(B)  # [T, B], [B]

    def unroll(self, buffers: Buffers, slot: int, version: int) -> tuple[dict, float, float]:
        """Fill ``slot``; returns the episodes that ended in it (``EpisodeStats.take_new``) and the
        env and inference seconds."""
        ro = buffers.rollout(slot, self.values, self.next_value)
        c = self.carry = collect(self.policy, self.venv, ro, self.carry, self.stats, self.timers)
        T = ro.num_steps
        tree_map(lambda buf, x: buf[slot, T].copy_(x), buffers.obs, c.obs)  # only bootstrapped from
        buffers.reset[slot, T], buffers.prev_action[slot, T] = c.reset, c.prev_action
        buffers.prev_reward[slot, T] = c.prev_reward
        buffers.version[slot] = version
        out = self.stats.take_new(), self.timers.env, self.timers.inference
        self.timers.reset()
        return out

    def close(self) -> None:
        self.venv.close()


# ---------------------------------------------------------------------------------------------
# the pool, as the learner sees it
# ---------------------------------------------------------------------------------------------

class ActorPool(Protocol):
    """A pool of ``num_actors`` actors and the slots of ``buffers`` they fill, as the learner sees
    it, whatever the transport: ``publish`` weights, ``start`` the actors, ``wait`` for unrolls
    (restarting actors that died; ``ActorFailedError`` when one keeps dying), ``take`` a full slot
    and ``release`` it, ``close`` (no actor outlives it). The counters are filled by ``wait``."""

    buffers: Buffers
    full: list[int]            # slots written by actors, waiting for the learner (oldest first)
    restarts: int              # actor restarts in this run
    errors: list[str]          # "actor i: <error>" for each actor that raised
    episodes: EpisodeStats     # episodes the actors finished (``new_*``; the learner takes them)
    env_s: float               # seconds the actors spent stepping envs (the learner resets them)
    inference_s: float         # seconds the actors spent in the policy

    def publish(self, policy: ActorCritic, version: int) -> None:
        """Make the learner's weights the ones actors act with from their next unroll."""

    def start(self) -> None:
        """Start every actor."""

    def wait(self, timeout: float) -> None:
        """Take in the unrolls that arrive within ``timeout`` seconds; restart dead actors."""

    def take(self) -> int:
        """The oldest full slot; it stays the learner's until ``release``."""

    def release(self, slot: int) -> None:
        """Give a slot back to the actor that owns it."""

    def close(self) -> None:
        """Stop every actor."""


class SlotBook:
    """The bookkeeping both transports' pools share: actor i owns ``per_actor`` consecutive slots
    of ``buffers`` (enough for a batch while every actor keeps one to fill); the ``ActorPool``
    counters; and how many times in a row each actor died before an unroll."""

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, shared: bool):
        n = cfg.num_actors
        self.per_actor = max(2, -(-cfg.learner_batch // n) + 1)
        self.buffers = Buffers(policy, n * self.per_actor, cfg.unroll_length, cfg.num_envs // n,
                               shared=shared)
        self.full: list[int] = []        # slots written by actors, waiting for the learner
        self.held: set[int] = set()      # slots the learner took and has not released yet
        self.restarts = 0
        self.errors: list[str] = []
        self.episodes = EpisodeStats()   # filled from the actors' unrolls (taken by the learner)
        self.env_s = self.inference_s = 0.0
        self.generation = [0] * n        # restarts of each actor: a fresh seed each time
        self.unrolls_since_start = [0] * n
        self.failures_in_a_row = [0] * n

    def owner(self, slot: int) -> int:
        return slot // self.per_actor

    def slots(self, i: int) -> range:
        """The slots actor ``i`` owns."""
        return range(i * self.per_actor, (i + 1) * self.per_actor)

    def take(self) -> int:
        """The oldest full slot; it stays the learner's until ``release``."""
        slot = self.full.pop(0)
        self.held.add(slot)
        return slot

    def received(self, i: int, slot: int, episodes: dict, env_s: float, inference_s: float) -> None:
        """Actor ``i`` filled ``slot`` (``Actor.unroll``'s episodes and seconds)."""
        self.full.append(slot)
        self.unrolls_since_start[i] += 1
        self.failures_in_a_row[i] = 0
        self.episodes.add_new(episodes)
        self.env_s += env_s
        self.inference_s += inference_s

    def count_death(self, i: int, last_error: str) -> None:
        """Actor ``i`` died: count a restart (a new generation), or raise ``ActorFailedError``
        when it died ``MAX_CONSECUTIVE_FAILURES`` times in a row without an unroll."""
        if self.unrolls_since_start[i] == 0:
            self.failures_in_a_row[i] += 1
        if self.failures_in_a_row[i] >= MAX_CONSECUTIVE_FAILURES:
            raise ActorFailedError(f"actor {i} died {self.failures_in_a_row[i]} times in a row "
                                   f"before producing an unroll; last error: {last_error}")
        self.restarts += 1
        self.generation[i] += 1
        self.unrolls_since_start[i] = 0
