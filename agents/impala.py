"""IMPALA-style learner: actors, unroll slots, V-trace, one learner. Reads as ``Intake`` (fresh
unrolls from the actor pool), ``take_batch()``, ``update()`` (one learner step) and ``train()``; the
actors are ``agents.actor`` with two transports, ``agents.local_actors`` (processes, shared memory)
and ``agents.ray_actors`` (``--actors ray``); the run around the updates is ``agents.runloop``.

The learner (on ``--device``) batches ``--learner-batch`` unrolls, re-runs the core from their start
states with resets applied inside, computes V-trace targets and takes one gradient step on the
policy gradient (advantages ``rho_s (r_s + gamma_s v_{s+1} - V(x_s))``, normalised per batch with
``--norm-adv``), the value loss, the entropy bonus and the exploration floor
(``--uniform-kl-coef``), as PPO's loss has them. ``--learner-epochs`` and ``--learner-minibatches``
make that several passes over random groups of the batch's unrolls, V-trace recomputed for the
moved policy at each step; ``--pg-loss clipped`` (APPO) then replaces the policy gradient by PPO's
clipped surrogate of the ratio to the learner's policy before the update, on the same advantages
weighted by that policy's clipped importance weight against the actor's (``policy_loss``).
It publishes new weights to the actors after each update (local actors: a shared state_dict
guarded by a sequence counter, no lock that a killed actor could leave held). Unrolls acted by a
policy more than ``--max-policy-lag`` updates old are dropped.

One gradient step per batch by default (PPO takes ``update_epochs * num_minibatches``): the paper's
IMPALA needs small batches (few envs per actor, ``--learner-batch 1``) to get enough updates out of
a step budget; APPO gets them from PPO-sized batches (``--learner-epochs 4 --learner-minibatches
4``).

An actor that dies is reported in the log and ``actors.log`` and restarted with fresh environments;
the learner's weights are untouched. Ctrl-C or SIGTERM stops the run after the current update (or
while it waits for unrolls) and writes a checkpoint; the actors are stopped on every way out.

Truncated episodes bootstrap from the value of the final observation computed by the actor (with
its weights and the memory after the step), as PPO's collect does; V-trace's discounts are zero only
at termination. ``--resume`` restores weights, optimizer, counters and statistics; the actors start
fresh environments seeded past the steps already taken (the run is asynchronous, so not bit-exact).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.actor import ActorFailedError, ActorPool, Buffers
from agents.config import TrainConfig
from agents.local_actors import LocalActorPool
from agents.ray_actors import RayActorPool
from agents.returns import vtrace
from agents.rollout import EpisodeStats, Timers
from agents.runloop import RunLoop, check_finite
from policies.actor_critic import ActorCritic, tree_map

State = tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------------------------
# the actors' unrolls
# ---------------------------------------------------------------------------------------------

def make_pool(cfg: TrainConfig, policy: ActorCritic, seed_offset: int,
              report: Callable[[str], None]) -> ActorPool:
    """The actor pool of ``cfg.actors``: local processes or Ray actors, one interface."""
    pool = RayActorPool if cfg.actors == "ray" else LocalActorPool
    return pool(cfg, policy, seed_offset, report)


class Intake:
    """The learner's side of the pool: batches of unrolls fresh enough for its weights, the actors'
    episodes and seconds, and what it saw (policy lag, unrolls dropped as too old)."""

    def __init__(self, pool: ActorPool, cfg: TrainConfig):
        self.pool, self.batch_size, self.max_lag = pool, cfg.learner_batch, cfg.max_policy_lag
        self.steps_per_unroll = cfg.unroll_length * (cfg.num_envs // cfg.num_actors)
        self.lags: list[int] = []            # since the last ``perf``
        self.lag_sum = self.lag_count = 0    # before that
        self.dropped = self.dropped_steps = 0

    def gather(self, version: int, stopped: Callable[[], bool]) -> list[int] | None:
        """``--learner-batch`` full slots acted by weights at most ``--max-policy-lag`` versions
        older than ``version`` (older ones go back to their actors); None once ``stopped()``."""
        pool, slots = self.pool, []
        while len(slots) < self.batch_size and not stopped():
            pool.wait(timeout=0.0 if pool.full else 0.5)  # also notices dead actors
            while pool.full and len(slots) < self.batch_size:
                slot = pool.take()
                lag = version - int(pool.buffers.version[slot])
                if self.max_lag is not None and lag > self.max_lag:
                    self.dropped += 1
                    self.dropped_steps += self.steps_per_unroll
                    pool.release(slot)
                else:
                    self.lags.append(lag)
                    slots.append(slot)
        if stopped():
            for slot in slots:
                pool.release(slot)
            return None
        return slots

    def batch(self, slots: list[int], device: torch.device) -> Batch:
        """The slots copied to the learner's device; they go back to their actors."""
        batch = take_batch(self.pool.buffers, slots, device)
        for slot in slots:
            self.pool.release(slot)
        return batch

    def drain(self, stats: EpisodeStats, timers: Timers) -> None:
        """Move the episodes the actors finished and their env and inference seconds to the run."""
        pool = self.pool
        stats.add_new(pool.episodes.take_new())
        timers.env += pool.env_s
        timers.inference += pool.inference_s
        pool.env_s = pool.inference_s = 0.0

    def perf(self) -> dict[str, float]:
        """perf/ scalars of the updates since the last call (called on the updates that log)."""
        out = {}
        if self.lags:
            out = {"policy_lag_mean": float(np.mean(self.lags)),
                   "policy_lag_max": float(max(self.lags))}
        self.lag_sum += sum(self.lags)
        self.lag_count += len(self.lags)
        self.lags = []
        return out | {"dropped_unrolls": self.dropped, "actor_restarts": self.pool.restarts}

    def summary(self) -> dict[str, Any]:
        """IMPALA's entries of summary.json."""
        lag_sum, lag_count = self.lag_sum + sum(self.lags), self.lag_count + len(self.lags)
        return {"policy_lag_mean": round(lag_sum / lag_count, 3) if lag_count else None,
                "dropped_unrolls": self.dropped, "dropped_steps": self.dropped_steps,
                "actor_restarts": self.pool.restarts, "actor_errors": self.pool.errors[-10:]}


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
    proximal_logprobs: torch.Tensor  # [T, N] PPO's old policy for --pg-loss clipped (mu until set)

    def split(self, parts: int) -> list[Batch]:
        """The unrolls in ``parts`` random groups of equal size (one group: the batch itself)."""
        if parts == 1:
            return [self]
        n = self.rewards.shape[1]
        groups = torch.randperm(n, device=self.rewards.device).view(parts, n // parts)
        # every field is a tensor tree with the unrolls on dim 1 (the state: [num_layers, N, H])
        def part(idx: torch.Tensor) -> Batch:
            pick = lambda x: x.index_select(1, idx)
            return Batch(**{f.name: tree_map(pick, getattr(self, f.name))
                            for f in dataclasses.fields(self)})

        return [part(idx) for idx in groups]


def take_batch(buf: Buffers, slots: list[int], device: torch.device) -> Batch:
    """Copy the slots out of shared memory (after which they can be refilled)."""
    def cat(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[i] for i in slots], dim=1).to(device, non_blocking=True)

    # state tensors follow the [num_layers, B, H] convention: batch is dim 1
    state = tuple(torch.cat([s[i, 0] for i in slots], dim=1).to(device) for s in buf.states)
    logprobs = cat(buf.logprobs)
    return Batch(tree_map(cat, buf.obs), cat(buf.reset), cat(buf.prev_action), cat(buf.prev_reward),
                 cat(buf.actions), logprobs, cat(buf.rewards), cat(buf.terminated),
                 cat(buf.truncated), cat(buf.final_values), state, logprobs)


def rerun(policy: ActorCritic, b: Batch, **kwargs) -> tuple[torch.Tensor, ...]:
    """``policy.evaluate`` on the batch's T + 1 steps (the last action row is a dummy)."""
    actions = torch.cat([b.actions, b.actions[-1:]], 0)
    return policy.evaluate(b.obs, b.state, b.reset, actions, b.prev_action, b.prev_reward,
                           **kwargs)


def policy_loss(logp: torch.Tensor, behaviour_logp: torch.Tensor, proximal_logp: torch.Tensor,
                adv: torch.Tensor, clip_coef: float | None, rho_bar: float) -> torch.Tensor:
    """The policy-gradient loss on [T, N] tensors.

    ``clip_coef`` None: ``-adv * log pi``, the advantage already weighted by V-trace's rho.
    Otherwise PPO's clipped surrogate of the ratio ``pi / pi_prox`` to the proximal policy (the
    learner's at the start of this batch's update), weighted by ``min(rho_bar, pi_prox / mu)`` for
    the actor's lag (decoupled PPO, Hilton et al. 2021). Clipping against mu itself would make the
    lagging policies share one trust region: with a lag of k updates the policy could move only
    1 / (k + 1) as far per update as PPO's.
    """
    if clip_coef is None:
        return -(adv * logp).mean()
    ratio = (logp - proximal_logp).exp()
    weight = (proximal_logp - behaviour_logp).exp().clamp(max=rho_bar)
    surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    return (weight * surrogate).mean()


def update(policy: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch,
           cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """One V-trace actor-critic step on a batch of unrolls; returns loss statistics (tensors)."""
    T = b.rewards.shape[0]
    logp, entropy, value, uniform_kl = rerun(policy, b, with_uniform_kl=True)
    logp, entropy, values = logp[:T], entropy[:T], value[:T]                # [T, N]
    clipped = cfg.pg_loss == "clipped"
    vs, pg_adv = vtrace(b.logprobs, logp.detach(), b.rewards, values.detach(), b.terminated,
                        b.truncated, value[T].detach(), b.final_values, cfg.gamma,
                        cfg.vtrace_rho_bar, cfg.vtrace_c_bar, cfg.vtrace_lambda, pg_rho=not clipped)
    if cfg.norm_adv:  # as PPO does: scale-free policy gradients (small shaped rewards)
        pg_adv = (pg_adv - pg_adv.mean()) / (pg_adv.std() + 1e-8)
    pg_loss = policy_loss(logp, b.logprobs, b.proximal_logprobs, pg_adv,
                          cfg.clip_coef if clipped else None, cfg.vtrace_rho_bar)
    v_loss = 0.5 * ((vs - values) ** 2).mean()
    ent, kl_u = entropy.mean(), uniform_kl[:T].mean()
    # the exploration floor PPO uses (--uniform-kl-coef): keeps the junction-type actions alive
    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss + cfg.uniform_kl_coef * kl_u

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in policy.parameters() if p.requires_grad]
    check_finite(loss, nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    optimizer.step()
    with torch.no_grad():
        log_rho = logp.detach() - b.logprobs
        var_y = vs.var()
        explained = torch.where(var_y > 0, 1 - (vs - values.detach()).var() / var_y, torch.nan)
        return {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(),
                "entropy": ent.detach(), "uniform_kl": kl_u.detach(),
                "importance_ratio": log_rho.exp().mean(),
                "rho_clipfrac": (log_rho > math.log(cfg.vtrace_rho_bar)).float().mean(),
                "clipfrac": ((logp.detach() - b.proximal_logprobs).exp() - 1).abs()
                .gt(cfg.clip_coef).float().mean(),
                "approx_kl": ((log_rho.exp() - 1) - log_rho).mean(),
                "explained_variance": explained}


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
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    run = RunLoop(cfg, policy, optimizer, run_dir, device, resume, stop, on_progress, algo="impala",
                  event_log="actors.log", failures=(ActorFailedError,))
    pool = make_pool(cfg, policy, seed_offset=run.global_step, report=run.report)  # --actors
    intake = Intake(pool, cfg)
    pool.publish(policy, run.update)
    with run, contextlib.closing(pool):  # the actors are stopped on every way out
        pool.start()
        while run.next_update():
            with run.timing("wait"):
                slots = intake.gather(run.update, stopped=lambda: run.interrupted)
            if slots is None:
                break  # Ctrl-C or SIGTERM while waiting for unrolls
            with run.timing("learn"):
                batch = intake.batch(slots, device)
                policy.train()
                if cfg.pg_loss == "clipped":  # PPO's old policy: the learner's, before this update
                    with torch.no_grad():
                        batch.proximal_logprobs = rerun(policy, batch)[0][:-1]
                for _epoch in range(cfg.learner_epochs):
                    for part in batch.split(cfg.learner_minibatches):
                        losses = update(policy, optimizer, part, cfg)
                pool.publish(policy, run.update + 1)  # the version this update makes
            intake.drain(run.stats, run.timers)
            run.collected(cfg.batch_size)
            run.end_update(losses, perf=intake.perf)
    return run.finish(extra={"num_actors": cfg.num_actors, **intake.summary()})
