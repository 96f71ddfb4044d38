"""IMPALA-style learner: actor processes, shared-memory unrolls, V-trace, one learner. Reads as
``actor()`` (what each actor process does), ``update()`` (one learner step) and ``train()``.

Actors (``--num-actors`` processes, CPU, one torch thread each) step ``num_envs / num_actors``
environments with a CPU copy of the policy and write unrolls of ``--unroll-length`` steps into
preallocated shared-memory slots (TorchBeast's design). Each slot holds T + 1 observations (the last
one is only bootstrapped from), the behaviour policy's log-probabilities, the recurrent state at the
unroll's start (an opaque tuple, never looked into) and the policy version that acted. The steps
themselves are ``agents.ppo.collect`` writing into a view of the slot.

The learner (on ``--device``) batches ``--learner-batch`` unrolls, re-runs the core from their start
states with resets applied inside, computes V-trace targets and trains policy (with an entropy
bonus) and value. It publishes new weights through a shared state_dict guarded by a sequence
counter (no lock that a killed actor could leave held). Unrolls acted by a policy more than
``--max-policy-lag`` updates old are dropped.

Each actor talks to the learner through its own pipe: the learner sends free slot indices, the actor
answers with full ones. An actor that dies (an environment raising, a killed process) is reported in
the log and ``actors.log`` and restarted with fresh environments; the learner's weights are
untouched.
Ctrl-C or SIGTERM stops the run after the current update and writes a checkpoint; actors are
daemonic, ignore SIGINT, exit when the learner's pipe closes, and are terminated in ``finally``.

Truncated episodes bootstrap from the value of the final observation computed by the actor (with
its weights and the memory after the step), as PPO's collect does; V-trace's discounts are zero only
at termination. ``--resume`` restores weights, optimizer, counters and statistics; the actors start
fresh environments seeded past the steps already taken (the run is asynchronous, so not bit-exact).
"""

from __future__ import annotations

import dataclasses
import math
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
from torch import nn

from agents import checkpoint as ckpt
from agents.config import TrainConfig
from agents.logger import Logger
from agents.ppo import (Carry, EpisodeStats, NonFiniteLossError, Timers, _initial_carry, _log,
                        _postfix, _StopFlag, collect)
from agents.returns import vtrace
from policies.actor_critic import ActorCritic, obs_zeros, tree_map

State = tuple[torch.Tensor, ...]
MAX_CONSECUTIVE_FAILURES = 3  # an actor dying this often in a row without one unroll stops the run


class ActorFailedError(RuntimeError):
    """An actor keeps dying before it produces anything (e.g. its environment cannot be built)."""


# ---------------------------------------------------------------------------------------------
# shared memory: unroll slots and published weights
# ---------------------------------------------------------------------------------------------

class Buffers:
    """``num_buffers`` preallocated unroll slots in shared memory (CPU)."""

    def __init__(self, policy: ActorCritic, num_buffers: int, unroll_length: int,
                 envs_per_actor: int):
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
        for x in self._tensors():
            x.share_memory_()

    def _tensors(self) -> list[torch.Tensor]:
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
                       embed_size=cfg.embed_size, prev_action_reward=cfg.prev_action_reward)


def actor(index: int, cfg_dict: dict, seed: int, buffers: Buffers, weights: SharedWeights,
          conn: Connection, parent_pid: int) -> None:
    """One actor process: wait for a free slot, fill it with an unroll, send it back; repeat.

    Messages to the learner: ("unroll", slot, episodes, env_s, inference_s) and ("error", text).
    From the learner: a free slot index, or None to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)                 # Ctrl-C is the learner's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))        # run `finally` (close envs)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    cfg = TrainConfig.from_dict(cfg_dict)
    B = cfg.num_envs // cfg.num_actors
    T = cfg.unroll_length
    # ppo.collect's view of one unroll: T steps of B envs, one start state
    local = dataclasses.replace(cfg, num_envs=B, num_actors=1, num_steps=T, seq_len=T,
                                num_minibatches=1, seed=seed)
    venv = None
    try:
        venv = make_actor_envs(cfg, B, seed)
        policy = make_actor_policy(cfg, venv)
        policy.eval()
        version = weights.fetch(policy, have=-1)
        device = torch.device("cpu")
        carry = _initial_carry(policy, venv, local, device)
        stats, timers = EpisodeStats(), Timers()
        values, next_value = torch.zeros(T, B), torch.zeros(B)
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
            version = weights.fetch(policy, have=version)
            view = _SlotView(buffers, slot, T, values, next_value)
            carry = collect(policy, venv, view, carry, local, stats, timers, device)
            # observation T: only bootstrapped from
            tree_map(lambda buf, x: buf[slot, T].copy_(x), buffers.obs, carry.obs)
            buffers.reset[slot, T] = carry.reset
            buffers.prev_action[slot, T] = carry.prev_action
            buffers.prev_reward[slot, T] = carry.prev_reward
            buffers.version[slot] = version
            episodes = {"r": stats.new_returns, "l": stats.new_lengths, "s": stats.new_successes}
            conn.send(("unroll", slot, episodes, timers.env, timers.inference))
            stats.new_returns, stats.new_lengths, stats.new_successes = [], [], []
            timers.reset()
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
        if venv is not None:
            venv.close()


# ---------------------------------------------------------------------------------------------
# actor processes as seen from the learner
# ---------------------------------------------------------------------------------------------

class ActorPool:
    """Starts, watches and restarts the actor processes; hands the learner full slots."""

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, weights: SharedWeights,
                 seed_offset: int, report: Callable[[str], None]):
        self.cfg = cfg
        # slots owned by each actor: enough for a batch while every actor keeps one to fill
        self.per_actor = max(2, -(-cfg.learner_batch // cfg.num_actors) + 1)
        self.buffers = Buffers(policy, cfg.num_actors * self.per_actor, cfg.unroll_length,
                               cfg.num_envs // cfg.num_actors)
        self.weights = weights
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

    def start(self) -> None:
        for i in range(self.cfg.num_actors):
            self._start(i)

    def _start(self, i: int) -> None:
        B = self.cfg.num_envs // self.cfg.num_actors
        seed = (self.cfg.seed + self.seed_offset + i * B
                + self.generation[i] * 7919 * self.cfg.num_envs)
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


# ---------------------------------------------------------------------------------------------
# learner
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Batch:
    """``learner_batch`` unrolls side by side on the learner's device (N = unrolls x envs)."""

    obs: Any                    # [T+1, N, ...] tensor tree
    reset: torch.Tensor         # [T+1, N]
    prev_action: torch.Tensor   # [T+1, N, *action_shape]
    prev_reward: torch.Tensor   # [T+1, N]
    actions: torch.Tensor       # [T, N, *action_shape]
    logprobs: torch.Tensor      # [T, N] behaviour policy
    rewards: torch.Tensor       # [T, N]
    terminated: torch.Tensor    # [T, N]
    truncated: torch.Tensor     # [T, N]
    final_values: torch.Tensor  # [T, N]
    state: State                # core state before step 0, the opaque tuple with batch N


def take_batch(buf: Buffers, slots: list[int], device: torch.device) -> Batch:
    """Copy the slots out of shared memory (after which they can be refilled)."""
    def cat(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[i] for i in slots], dim=1).to(device, non_blocking=True)

    # state tensors follow the [num_layers, B, H] convention: batch is dim 1
    state = tuple(torch.cat([s[i, 0] for i in slots], dim=1).to(device) for s in buf.states)
    return Batch(tree_map(cat, buf.obs), cat(buf.reset), cat(buf.prev_action), cat(buf.prev_reward),
                 cat(buf.actions), cat(buf.logprobs), cat(buf.rewards), cat(buf.terminated),
                 cat(buf.truncated), cat(buf.final_values), state)


def update(policy: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch,
           cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """One V-trace actor-critic step on a batch of unrolls; returns loss statistics (tensors)."""
    T = b.rewards.shape[0]
    actions = torch.cat([b.actions, b.actions[-1:]], 0)   # [T+1, N, ...]: the last row is unused
    logp, entropy, value, uniform_kl = policy.evaluate(b.obs, b.state, b.reset, actions,
                                                       b.prev_action, b.prev_reward,
                                                       with_uniform_kl=True)
    logp, entropy, values = logp[:T], entropy[:T], value[:T]                # [T, N]
    vs, pg_adv = vtrace(b.logprobs, logp.detach(), b.rewards, values.detach(), b.terminated,
                        b.truncated, value[T].detach(), b.final_values, cfg.gamma,
                        cfg.vtrace_rho_bar, cfg.vtrace_c_bar)
    if cfg.norm_adv:  # as PPO does: scale-free policy gradients (small shaped rewards)
        pg_adv = (pg_adv - pg_adv.mean()) / (pg_adv.std() + 1e-8)
    pg_loss = -(pg_adv * logp).mean()
    v_loss = 0.5 * ((vs - values) ** 2).mean()
    ent, kl_u = entropy.mean(), uniform_kl[:T].mean()
    # the exploration floor PPO uses (--uniform-kl-coef): keeps the junction-type actions alive
    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss + cfg.uniform_kl_coef * kl_u

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in policy.parameters() if p.requires_grad]
    grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"loss became {loss.item()} (gradient norm {grad_norm.item()}): "
                                 "lower --learning-rate or --max-grad-norm")
    optimizer.step()
    with torch.no_grad():
        log_rho = logp.detach() - b.logprobs
        var_y = vs.var()
        explained = torch.where(var_y > 0, 1 - (vs - values.detach()).var() / var_y, torch.nan)
        return {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(),
                "entropy": ent.detach(), "uniform_kl": kl_u.detach(),
                "importance_ratio": log_rho.exp().mean(),
                "rho_clipfrac": (log_rho > math.log(cfg.vtrace_rho_bar)).float().mean(),
                "approx_kl": ((log_rho.exp() - 1) - log_rho).mean(),
                "explained_variance": explained}


def _empty_carry(policy: ActorCritic) -> Carry:
    """The checkpoint's carry: the actors' environments are not saved (they restart on resume)."""
    head = policy.head
    return Carry(obs=obs_zeros(policy.observation_space, (0,), "cpu"),
                 reset=torch.zeros(0, dtype=torch.bool),
                 prev_action=torch.zeros(0, *head.action_shape(), dtype=head.action_dtype()),
                 prev_reward=torch.zeros(0), state=policy.initial_state(0, "cpu"))


def train(cfg: TrainConfig, venv, policy: ActorCritic, run_dir: str, device: torch.device,
          resume: dict | None = None, stop: Callable[[int], bool] | None = None,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``policy`` with IMPALA; same run folder, logs, checkpoints and summary.json as PPO.

    Args:
        cfg: the run's configuration (``algo == "impala"``).
        venv: any env of the task (only its spaces are used; the actors make their own).
        policy: the actor-critic, already on ``device``.
        run_dir: the run folder (exists).
        device: learner device.
        resume: a loaded checkpoint to continue from.
        stop: optional ``stop(update) -> bool`` checked after each update.
        on_progress: optional callback receiving the progress dict after each update.

    Returns:
        The summary dict (also in ``run_dir/summary.json``); ``status`` is "finished",
        "interrupted", "diverged: ..." or "failed: ..." (an actor that cannot start).
    """
    from tqdm import tqdm

    from agents.evaluate import evaluate

    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    stats, timers = EpisodeStats(), Timers()
    logger = Logger(run_dir, purge_step=resume["global_step"] if resume else None)
    global_step, update_idx, wall_before = 0, 0, 0.0
    best_success: float | None = None
    if resume is not None:
        policy.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        global_step, update_idx = resume["global_step"], resume["update"]
        wall_before, best_success = resume["wall_time_s"], resume["best_success_rate"]
        stats.load_state_dict(resume["stats"])
        ckpt.set_rng_state(resume["rng"])
    bar = tqdm(total=cfg.num_updates * cfg.batch_size, initial=global_step, unit="step",
               unit_scale=True, dynamic_ncols=True, disable=not cfg.progress, desc="impala",
               smoothing=0.1)

    def report(message: str) -> None:
        bar.write(message, file=sys.stderr)
        with open(os.path.join(run_dir, "actors.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {global_step}: {message}\n")

    weights = SharedWeights(policy)
    weights.publish(policy, update_idx)
    pool = ActorPool(cfg, policy, weights, seed_offset=global_step, report=report)

    def save() -> str:
        return ckpt.save(run_dir, cfg=cfg, policy=policy, optimizer=optimizer,
                         global_step=global_step, update=update_idx,
                         wall_time_s=wall_before + time.perf_counter() - start,
                         carry=_empty_carry(policy), stats=stats, best_success_rate=best_success,
                         action_log=None)

    start = time.perf_counter()
    start_step = global_step
    status = "finished"
    lags: list[int] = []
    lag_sum, lag_count, dropped, dropped_steps, wait_s = 0, 0, 0, 0, 0.0
    totals = {"env": 0.0, "inference": 0.0, "learn": 0.0, "wait": 0.0}
    steps_per_unroll = cfg.unroll_length * (cfg.num_envs // cfg.num_actors)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        with _StopFlag() as interrupted:
            try:
                signal.signal(signal.SIGTERM, interrupted._handle)   # termination: stop like Ctrl-C
            except ValueError:  # not the main thread
                pass
            pool.start()
            while update_idx < cfg.num_updates:
                if cfg.anneal_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = (1.0 - update_idx / cfg.num_updates) * cfg.learning_rate
                # gather learner_batch unrolls that are fresh enough
                w0 = time.perf_counter()
                slots: list[int] = []
                while len(slots) < cfg.learner_batch and not interrupted.set:
                    pool.wait(timeout=0.0 if pool.full else 0.5)  # also notices dead actors
                    while pool.full and len(slots) < cfg.learner_batch:
                        slot = pool.take()
                        lag = update_idx - int(pool.buffers.version[slot])
                        if cfg.max_policy_lag is not None and lag > cfg.max_policy_lag:
                            dropped += 1
                            dropped_steps += steps_per_unroll
                            pool.release(slot)
                        else:
                            lags.append(lag)
                            slots.append(slot)
                wait_s += time.perf_counter() - w0
                if interrupted.set:
                    for slot in slots:
                        pool.release(slot)
                    status = "interrupted"
                    break

                l0 = time.perf_counter()
                batch = take_batch(pool.buffers, slots, device)
                for slot in slots:
                    pool.release(slot)
                policy.train()
                try:
                    losses = update(policy, optimizer, batch, cfg)
                except NonFiniteLossError as err:
                    status = f"diverged: {err}"
                    break
                update_idx += 1
                weights.publish(policy, update_idx)
                timers.learn += time.perf_counter() - l0
                timers.env += pool.env_s
                timers.inference += pool.inference_s
                pool.env_s = pool.inference_s = 0.0
                global_step += cfg.batch_size

                pe = pool.episodes
                stats.new_returns += pe.new_returns
                stats.new_lengths += pe.new_lengths
                stats.new_successes += pe.new_successes
                stats.episodes += pe.episodes
                pe.new_returns, pe.new_lengths, pe.new_successes, pe.episodes = [], [], [], 0
                episodes = stats.flush()
                recent_return, recent_success = stats.recent()
                enough = len(stats.successes) >= min(20, stats.successes.maxlen)
                if recent_success is not None and enough:
                    best_success = (recent_success if best_success is None
                                    else max(best_success, recent_success))
                sps = (global_step - start_step) / max(time.perf_counter() - start, 1e-9)
                if update_idx % cfg.log_every == 0 or update_idx == cfg.num_updates:
                    for k in ("env", "inference", "learn"):
                        totals[k] += getattr(timers, k)
                    totals["wait"] += wait_s
                    _log(logger, policy, global_step, update_idx, cfg, episodes, losses, timers,
                         sps, optimizer.param_groups[0]["lr"])
                    logger.scalar("perf/wait_s", wait_s, global_step)
                    if lags:
                        logger.scalar("perf/policy_lag_mean", float(np.mean(lags)), global_step)
                        logger.scalar("perf/policy_lag_max", float(max(lags)), global_step)
                    logger.scalar("perf/dropped_unrolls", dropped, global_step)
                    logger.scalar("perf/actor_restarts", pool.restarts, global_step)
                    lag_sum, lag_count = lag_sum + sum(lags), lag_count + len(lags)
                    lags, wait_s = [], 0.0
                    timers.reset()
                progress = {"step": global_step, "update": update_idx, "sps": sps,
                            "return": recent_return, "success": recent_success}
                bar.update(cfg.batch_size)
                bar.set_postfix_str(_postfix(progress), refresh=False)
                if on_progress is not None:
                    on_progress(progress)
                if update_idx % cfg.save_every == 0 and update_idx < cfg.num_updates:
                    save()
                if interrupted.set or (stop is not None and stop(update_idx)):
                    status = "interrupted"
                    break
    except ActorFailedError as err:
        status = f"failed: {err}"
        report(status)
    finally:
        pool.close()
        try:
            signal.signal(signal.SIGTERM, old_term)
        except ValueError:
            pass
        bar.close()
    lag_sum, lag_count = lag_sum + sum(lags), lag_count + len(lags)
    diverged = status.startswith("diverged")
    checkpoint_path = ckpt.path(run_dir)
    if not diverged:
        checkpoint_path = save()
    wall = wall_before + time.perf_counter() - start
    recent_return, recent_success = stats.recent()
    final_eval = None
    if status == "finished" and cfg.eval_episodes > 0:
        final_eval = evaluate(policy, cfg, device, episodes=cfg.eval_episodes,
                              greedy=cfg.eval_greedy)
        logger.scalar("charts/eval_return", final_eval["return_mean"], global_step)
        if final_eval["success_rate"] is not None:
            logger.scalar("charts/eval_success_rate", final_eval["success_rate"], global_step)
            s = final_eval["success_rate"]
            best_success = s if best_success is None else max(best_success, s)
    summary = {
        "env": cfg.env, "env_kwargs": cfg.env_kwargs, "core": cfg.core, "algo": "impala",
        "seed": cfg.seed,
        "status": status, "total_steps": global_step, "updates": update_idx,
        "wall_time_s": round(wall, 2), "sps": round(global_step / max(wall, 1e-9), 1),
        "final_success_rate": final_eval["success_rate"] if final_eval else None,
        "final_return": final_eval["return_mean"] if final_eval else recent_return,
        "final_eval_episodes": final_eval["episodes"] if final_eval else 0,
        "train_success_rate": recent_success, "train_return": recent_return,
        "best_success_rate": best_success, "checkpoint": checkpoint_path, "run_dir": run_dir,
        "perf_s": {k: round(v, 3) for k, v in totals.items()},
        "num_actors": cfg.num_actors,
        "policy_lag_mean": round(lag_sum / lag_count, 3) if lag_count else None,
        "dropped_unrolls": dropped, "dropped_steps": dropped_steps, "actor_restarts": pool.restarts,
        "actor_errors": pool.errors[-10:],
    }
    logger.write_json("summary.json", summary)
    logger.close()
    return summary
