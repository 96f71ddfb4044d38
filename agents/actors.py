"""IMPALA's actors: shared-memory unroll slots, published weights, the actor process and the pool
that starts, watches and restarts the actor processes (TorchBeast's design).

Actors (``--num-actors`` processes, CPU, one torch thread each) step ``num_envs / num_actors``
environments with a CPU copy of the policy and write unrolls of ``--unroll-length`` steps into
preallocated shared-memory slots. Each slot holds T + 1 observations (the last one is only
bootstrapped from), the behaviour policy's log-probabilities, the recurrent state at the unroll's
start (an opaque tuple, never looked into) and the policy version that acted. The steps themselves
are ``agents.ppo.collect`` writing into a view of the slot; the recurrent state, observation and
episode carry on from one unroll to the next, and resets inside an unroll are recorded per step.

Each actor talks to the learner through its own pipe: the learner sends free slot indices, the actor
answers with full ones. An actor that dies (an environment raising, a killed process) is reported
and restarted with fresh environments. Actors are daemonic, ignore SIGINT, exit when the learner's
pipe closes, and are terminated by ``ActorPool.close``.

``Actor`` (envs, policy copy, carry; fills one slot) and the pool interface are shared with the
second transport, ``agents.ray_actors`` (``--actors ray``); ``make_pool`` picks one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import numpy as np
import torch
from torch import multiprocessing as mp

from agents.config import TrainConfig
from agents.ppo import collect
from agents.rollout import EpisodeStats, Timers, initial_carry
from policies.actor_critic import ActorCritic, obs_zeros, tree_map

MAX_CONSECUTIVE_FAILURES = 3  # an actor dying this often in a row without one unroll stops the run


class ActorFailedError(RuntimeError):
    """An actor keeps dying before it produces anything (e.g. its environment cannot be built)."""


# ---------------------------------------------------------------------------------------------
# shared memory: unroll slots and published weights
# ---------------------------------------------------------------------------------------------

class Buffers:
    """``num_buffers`` preallocated unroll slots (CPU), in shared memory unless ``shared`` is off."""

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


class _SlotView:
    """A slot seen as the ``Rollout`` that ``ppo.collect`` fills (views into shared memory)."""

    def __init__(self, buf: Buffers, i: int, T: int, values: torch.Tensor,
                 next_value: torch.Tensor):
        self.obs = tree_map(lambda x: x[i, :T], buf.obs)
        self.reset, self.prev_action = buf.reset[i, :T], buf.prev_action[i, :T]
        self.prev_reward = buf.prev_reward[i, :T]
        self.actions, self.logprobs, self.rewards = buf.actions[i], buf.logprobs[i], buf.rewards[i]
        self.terminated, self.truncated = buf.terminated[i], buf.truncated[i]
        self.final_values = buf.final_values[i]
        self.states = tuple(s[i] for s in buf.states)
        self.values, self.next_value = values, next_value  # actor-local; the learner recomputes


class SharedWeights:
    """The learner's latest state_dict in shared memory plus ``seq = [sequence, version]``.

    A seqlock: the sequence number is odd while the learner writes; a reader that saw the same even
    number before and after copying has a consistent copy. No lock is held by readers, so an actor
    killed mid-read blocks nobody.
    """

    def __init__(self, policy: ActorCritic):
        self.weights = {k: v.detach().to("cpu").clone().share_memory_()
                        for k, v in policy.state_dict().items()}
        self.seq = torch.zeros(2, dtype=torch.long).share_memory_()

    def publish(self, policy: ActorCritic, version: int) -> None:
        self.seq[0] += 1
        for k, v in policy.state_dict().items():
            self.weights[k].copy_(v.detach())
        self.seq[1] = version
        self.seq[0] += 1

    def fetch(self, policy: ActorCritic, have: int) -> int:
        """Load the published weights into ``policy`` unless it has them; returns the version."""
        while True:
            s1 = int(self.seq[0])
            if s1 % 2 == 0:
                version = int(self.seq[1])
                if version == have:
                    return have
                policy.load_state_dict(self.weights)
                if int(self.seq[0]) == s1:
                    return version
            time.sleep(0.001)


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
    return ActorCritic(venv.single_observation_space, venv.single_action_space, core=cfg.core,
                       hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                       embed_size=cfg.embed_size, prev_action_reward=cfg.prev_action_reward,
                       head_gain=cfg.policy_head_gain)


def actor_seed(cfg: TrainConfig, seed_offset: int, index: int, generation: int) -> int:
    """Seed of actor ``index``'s envs and RNG: disjoint per actor, fresh after each restart."""
    B = cfg.num_envs // cfg.num_actors
    return cfg.seed + seed_offset + index * B + generation * 7919 * cfg.num_envs


class Actor:
    """What one actor holds, whatever carries its unrolls: its envs, a CPU copy of the policy and
    the carry (observation, memory, episode) from one unroll into the next.

    ``unroll`` writes T steps of the B envs into a slot of a ``Buffers``; the process transport
    writes into shared memory, the Ray transport into a private one-slot buffer it returns.
    """

    def __init__(self, cfg: TrainConfig, seed: int):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        B, T = cfg.num_envs // cfg.num_actors, cfg.unroll_length
        # ppo.collect's view of one unroll: T steps of B envs, one start state
        self.local = dataclasses.replace(cfg, num_envs=B, num_actors=1, num_steps=T, seq_len=T,
                                         num_minibatches=1, seed=seed)
        self.venv = make_actor_envs(cfg, B, seed)
        self.policy = make_actor_policy(cfg, self.venv)
        self.policy.eval()
        self.device = torch.device("cpu")
        self.carry = initial_carry(self.policy, self.venv, self.local, self.device)
        self.stats, self.timers = EpisodeStats(), Timers()
        self.values, self.next_value = torch.zeros(T, B), torch.zeros(B)

    def unroll(self, buffers: Buffers, slot: int, version: int) -> tuple[dict, float, float]:
        """Fill ``slot``; returns the episodes that ended in it and the env and inference seconds."""
        T = self.local.num_steps
        view = _SlotView(buffers, slot, T, self.values, self.next_value)
        c = self.carry = collect(self.policy, self.venv, view, self.carry, self.local, self.stats,
                                 self.timers, self.device)
        tree_map(lambda buf, x: buf[slot, T].copy_(x), buffers.obs, c.obs)  # only bootstrapped from
        buffers.reset[slot, T], buffers.prev_action[slot, T] = c.reset, c.prev_action
        buffers.prev_reward[slot, T] = c.prev_reward
        buffers.version[slot] = version
        s = self.stats
        episodes = {"r": s.new_returns, "l": s.new_lengths, "s": s.new_successes}
        s.new_returns, s.new_lengths, s.new_successes = [], [], []
        out = episodes, self.timers.env, self.timers.inference
        self.timers.reset()
        return out

    def close(self) -> None:
        self.venv.close()


def actor(index: int, cfg_dict: dict, seed: int, buffers: Buffers, weights: SharedWeights,
          conn: Connection, parent_pid: int) -> None:
    """One actor process: wait for a free slot, fill it with an unroll, send it back; repeat.

    Messages to the learner: ("unroll", slot, episodes, env_s, inference_s) and ("error", text).
    From the learner: a free slot index, or None to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)                 # Ctrl-C is the learner's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))        # run `finally` (close envs)
    torch.set_num_threads(1)
    me = None
    try:
        me = Actor(TrainConfig.from_dict(cfg_dict), seed)
        version = weights.fetch(me.policy, have=-1)
        free: list[int] = []
        while True:
            while not free or conn.poll(0):
                if not conn.poll(1.0):
                    if os.getppid() != parent_pid:
                        return                                   # the learner is gone
                    continue
                msg = conn.recv()
                if msg is None:
                    return
                free.append(msg)
            slot = free.pop(0)
            version = weights.fetch(me.policy, have=version)
            episodes, env_s, inference_s = me.unroll(buffers, slot, version)
            conn.send(("unroll", slot, episodes, env_s, inference_s))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return                                                   # the learner closed the pipe
    except Exception as err:  # noqa: BLE001 - reported to the learner, which restarts this actor
        lines = traceback.format_exc().strip().splitlines()
        try:
            conn.send(("error", f"{type(err).__name__}: {err}", "\n".join(lines[-12:])))
        except OSError:
            pass
        sys.exit(1)
    finally:
        if me is not None:
            me.close()


# ---------------------------------------------------------------------------------------------
# actor processes as seen from the learner
# ---------------------------------------------------------------------------------------------

class ActorPool:
    """Starts, watches and restarts the actor processes; hands the learner full slots.

    The interface the learner sees, shared with ``agents.ray_actors.RayActorPool``: ``publish``
    weights, ``start``, ``wait`` for unrolls (restarting dead actors), ``take`` a full slot of
    ``buffers`` and ``release`` it, ``close``; and the counters ``full``, ``restarts``, ``errors``,
    ``episodes``, ``env_s`` and ``inference_s``.
    """

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, seed_offset: int,
                 report: Callable[[str], None]):
        self.cfg = cfg
        # slots owned by each actor: enough for a batch while every actor keeps one to fill
        self.per_actor = max(2, -(-cfg.learner_batch // cfg.num_actors) + 1)
        self.buffers = Buffers(policy, cfg.num_actors * self.per_actor, cfg.unroll_length,
                               cfg.num_envs // cfg.num_actors)
        self.weights = SharedWeights(policy)
        self.seed_offset = seed_offset
        self.report = report
        self.ctx = mp.get_context("spawn")  # safe with CUDA in the learner and with its threads
        self.procs: list[Any] = [None] * cfg.num_actors
        self.conns: list[Connection | None] = [None] * cfg.num_actors
        self.generation = [0] * cfg.num_actors
        self.unrolls_since_start = [0] * cfg.num_actors
        self.failures_in_a_row = [0] * cfg.num_actors
        self.full: list[int] = []        # slots written by actors, waiting for the learner
        self.held: set[int] = set()      # slots the learner took and has not released yet
        self.restarts = 0
        self.errors: list[str] = []
        self.last_error: list[str | None] = [None] * cfg.num_actors
        self.episodes = EpisodeStats()   # filled from the actors' messages (merged by the caller)
        self.env_s = self.inference_s = 0.0

    def owner(self, slot: int) -> int:
        return slot // self.per_actor

    def publish(self, policy: ActorCritic, version: int) -> None:
        """Make the learner's weights the ones actors act with from their next unroll."""
        self.weights.publish(policy, version)

    def start(self) -> None:
        for i in range(self.cfg.num_actors):
            self._start(i)

    def _start(self, i: int) -> None:
        seed = actor_seed(self.cfg, self.seed_offset, i, self.generation[i])
        mine, theirs = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=actor, name=f"impala-actor-{i}", daemon=True,
                             args=(i, self.cfg.to_dict(), seed, self.buffers, self.weights, theirs,
                                   os.getpid()))
        p.start()
        theirs.close()
        self.procs[i], self.conns[i] = p, mine
        self.unrolls_since_start[i] = 0
        for slot in range(i * self.per_actor, (i + 1) * self.per_actor):
            if slot not in self.full and slot not in self.held:
                mine.send(slot)

    def take(self) -> int:
        """The oldest full slot; it stays the learner's until ``release``."""
        slot = self.full.pop(0)
        self.held.add(slot)
        return slot

    def release(self, slot: int) -> None:
        """Give a slot back to its actor (if that actor is dead, its restart hands the slot out)."""
        self.held.discard(slot)
        try:
            self.conns[self.owner(slot)].send(slot)
        except OSError:
            pass

    def wait(self, timeout: float) -> None:
        """Take in what actors sent within ``timeout`` seconds; restart those that died."""
        conns = [c for c in self.conns if c is not None]
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs) if p is not None}
        ready = wait(conns + list(sentinels), timeout)
        dead = set()
        for r in ready:
            if r in sentinels:
                dead.add(sentinels[r])
                continue
            i = self.conns.index(r)
            if not self._drain(i):
                dead.add(i)
        for i in sorted(dead):
            self._drain(i)
            self._restart(i)

    def _drain(self, i: int) -> bool:
        """Read every pending message of actor i; False when its pipe is closed."""
        conn = self.conns[i]
        try:
            while conn.poll(0):
                msg = conn.recv()
                if msg[0] == "unroll":
                    _, slot, eps, env_s, inf_s = msg
                    self.full.append(slot)
                    self.unrolls_since_start[i] += 1
                    self.failures_in_a_row[i] = 0
                    self.episodes.new_returns += eps["r"]
                    self.episodes.new_lengths += eps["l"]
                    self.episodes.new_successes += eps["s"]
                    self.episodes.episodes += len(eps["r"])
                    self.env_s += env_s
                    self.inference_s += inf_s
                elif msg[0] == "error":
                    self.errors.append(f"actor {i}: {msg[1]}")
                    self.last_error[i] = msg[1]
                    self.report(f"actor {i} raised {msg[1]}\n{msg[2]}")
        except (EOFError, OSError):
            return False
        return True

    def _restart(self, i: int) -> None:
        p = self.procs[i]
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
        code = p.exitcode
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        self.conns[i].close()
        if self.unrolls_since_start[i] == 0:
            self.failures_in_a_row[i] += 1
        last, self.last_error[i] = self.last_error[i] or how, None
        if self.failures_in_a_row[i] >= MAX_CONSECUTIVE_FAILURES:
            raise ActorFailedError(f"actor {i} died {self.failures_in_a_row[i]} times in a row "
                                   f"before producing an unroll; last error: {last}")
        self.restarts += 1
        self.generation[i] += 1
        self.report(f"actor {i} died ({how}); restarting it with fresh environments "
                    f"(restart {self.restarts} of the run)")
        self._start(i)

    def alive(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.is_alive()]

    def close(self) -> None:
        """Ask every actor to stop, then terminate and kill what is left: none outlives this."""
        for c in self.conns:
            if c is not None:
                try:
                    c.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            if p is not None:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
                p.join(timeout=3)
            if p is not None and p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            if c is not None:
                c.close()


def make_pool(cfg: TrainConfig, policy: ActorCritic, seed_offset: int,
              report: Callable[[str], None]):
    """The actor pool of ``cfg.actors``: local processes or Ray actors, one interface."""
    if cfg.actors == "ray":
        from agents.ray_actors import RayActorPool

        return RayActorPool(cfg, policy, seed_offset, report)
    return ActorPool(cfg, policy, seed_offset, report)
