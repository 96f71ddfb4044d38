"""IMPALA-style learner: actor processes, shared-memory unrolls, V-trace, one learner. Reads as
``take_batch()``, ``update()`` (one learner step) and ``train()``; the actors are ``agents.actors``.

The learner (on ``--device``) batches ``--learner-batch`` unrolls, re-runs the core from their start
states with resets applied inside, computes V-trace targets and takes one gradient step on the
policy gradient (advantages ``rho_s (r_s + gamma_s v_{s+1} - V(x_s))``, normalised per batch with
``--norm-adv``), the value loss, the entropy bonus and the exploration floor
(``--uniform-kl-coef``), as PPO's loss has them. ``--learner-epochs`` and ``--learner-minibatches``
make that several passes over random groups of the batch's unrolls, V-trace recomputed for the
moved policy at each step; ``--pg-loss clipped`` (APPO) then replaces the policy gradient by PPO's
clipped surrogate of the ratio to the learner's policy before the update, on the same advantages
weighted by that policy's clipped importance weight against the actor's (``policy_loss``).
It publishes new weights through a shared state_dict guarded by a sequence counter (no lock that a
killed actor could leave held). Unrolls acted by a policy more than ``--max-policy-lag`` updates old
are dropped.

One gradient step per batch by default (PPO takes ``update_epochs * num_minibatches``): the paper's
IMPALA needs small batches (few envs per actor, ``--learner-batch 1``) to get enough updates out of
a step budget; APPO gets them from PPO-sized batches (``--learner-epochs 4 --learner-minibatches
4``).

An actor that dies is reported in the log and ``actors.log`` and restarted with fresh environments;
the learner's weights are untouched. Ctrl-C or SIGTERM stops the run after the current update and
writes a checkpoint; the actors are terminated in ``finally``.

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
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from agents import checkpoint as ckpt
from agents.actors import ActorFailedError, Buffers, make_pool
from agents.config import TrainConfig
from agents.evaluate import finish_run
from agents.logger import Logger
from agents.ppo import NonFiniteLossError, _log, _postfix, _StopFlag, interim_eval
from agents.returns import vtrace
from agents.rollout import Carry, EpisodeStats, Timers
from policies.actor_critic import ActorCritic, obs_zeros, tree_map

State = tuple[torch.Tensor, ...]


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

    def split(self, parts: int) -> list["Batch"]:
        """The unrolls in ``parts`` random groups of equal size (one group: the batch itself)."""
        if parts == 1:
            return [self]
        n = self.rewards.shape[1]
        groups = torch.randperm(n, device=self.rewards.device).view(parts, n // parts)
        # every field is a tensor tree with the unrolls on dim 1 (the state: [num_layers, N, H])
        return [Batch(**{f.name: tree_map(lambda x: x.index_select(1, idx), getattr(self, f.name))
                         for f in dataclasses.fields(self)}) for idx in groups]


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
                "clipfrac": ((logp.detach() - b.proximal_logprobs).exp() - 1).abs()
                .gt(cfg.clip_coef).float().mean(),
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

    pool = make_pool(cfg, policy, seed_offset=global_step, report=report)  # --actors local or ray
    pool.publish(policy, update_idx)

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
                if cfg.pg_loss == "clipped":  # PPO's old policy: the learner's, before this update
                    with torch.no_grad():
                        batch.proximal_logprobs = rerun(policy, batch)[0][:-1]
                try:
                    for _epoch in range(cfg.learner_epochs):
                        for part in batch.split(cfg.learner_minibatches):
                            losses = update(policy, optimizer, part, cfg)
                except NonFiniteLossError as err:
                    status = f"diverged: {err}"
                    break
                update_idx += 1
                pool.publish(policy, update_idx)
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
                best_success = stats.best_success(best_success)
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
                if cfg.eval_every and update_idx % cfg.eval_every == 0 and update_idx < cfg.num_updates:
                    interim_eval(logger, policy, cfg, device, global_step)
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
    checkpoint_path = ckpt.path(run_dir) if status.startswith("diverged") else save()
    wall = wall_before + time.perf_counter() - start
    extra = {"num_actors": cfg.num_actors,
             "policy_lag_mean": round(lag_sum / lag_count, 3) if lag_count else None,
             "dropped_unrolls": dropped, "dropped_steps": dropped_steps,
             "actor_restarts": pool.restarts, "actor_errors": pool.errors[-10:]}
    return finish_run(cfg, policy, device, logger, algo="impala", status=status, stats=stats,
                      global_step=global_step, updates=update_idx, wall=wall,
                      best_success=best_success, checkpoint=checkpoint_path, run_dir=run_dir,
                      perf_s=totals, extra=extra)
