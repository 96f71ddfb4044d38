"""Recurrent PPO (clipped objective, GAE) with whole-sequence minibatches: collect(), update(), train().

Recurrence: the rollout keeps the core state at the start of every training sequence of ``seq_len``
steps; minibatches are whole sequences re-run from those states, with episode resets applied inside
the sequence by the core. With ``seq_len == num_steps`` the gradient spans the whole rollout, and a
rollout that is a multiple of a fixed episode length (envs start together) holds whole episodes.
Termination and truncation stay apart: a truncated episode bootstraps from the value of its final
observation computed with the current recurrent state.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from agents import checkpoint as ckpt
from agents import distributed
from agents.config import TrainConfig
from agents.evaluate import evaluate, finish_run
from agents.logger import Logger
from agents.returns import gae
from agents.rollout import Carry, EpisodeStats, Timers, env_actions, initial_carry, stack_obs
from policies.actor_critic import ActorCritic, obs_to_tensor, obs_zeros, tree_map


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/Inf; training stops and keeps the last good checkpoint."""


# ---------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------

class Rollout:
    """Preallocated time-major rollout storage for ``num_steps`` x ``num_envs``."""

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, device: torch.device):
        T, B = cfg.num_steps, cfg.num_envs
        a_shape, a_dtype = policy.head.action_shape(), policy.head.action_dtype()
        self.obs = obs_zeros(policy.observation_space, (T, B), device)         # [T, B, ...]
        self.prev_action = torch.zeros(T, B, *a_shape, dtype=a_dtype, device=device)
        self.prev_reward = torch.zeros(T, B, device=device)                     # [T, B]
        self.reset = torch.zeros(T, B, dtype=torch.bool, device=device)         # [T, B]
        self.actions = torch.zeros(T, B, *a_shape, dtype=a_dtype, device=device)
        self.logprobs = torch.zeros(T, B, device=device)                        # [T, B]
        self.values = torch.zeros(T, B, device=device)                          # [T, B]
        self.rewards = torch.zeros(T, B, device=device)                         # [T, B]
        self.terminated = torch.zeros(T, B, dtype=torch.bool, device=device)    # [T, B]
        self.truncated = torch.zeros(T, B, dtype=torch.bool, device=device)     # [T, B]
        self.final_values = torch.zeros(T, B, device=device)                    # [T, B]
        # core state before the first step of each sequence: each [K, L, B, H]
        template = policy.initial_state(B, device)
        self.states = tuple(torch.zeros(T // cfg.seq_len, *s.shape, dtype=s.dtype, device=device)
                            for s in template)
        self.next_value = torch.zeros(B, device=device)                         # [B]


# ---------------------------------------------------------------------------------------------
# collect / update
# ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def collect(policy: ActorCritic, venv, ro: Rollout, carry: Carry, cfg: TrainConfig,
            stats: EpisodeStats, timers: Timers, device: torch.device) -> Carry:
    """Fill ``ro`` with ``num_steps`` steps of every env; returns the carry for the next rollout."""
    obs_space, act_space = policy.observation_space, venv.single_action_space
    obs, reset, prev_a, prev_r, state = carry.obs, carry.reset, carry.prev_action, carry.prev_reward, carry.state
    t0 = time.perf_counter()
    env_time = 0.0
    for t in range(cfg.num_steps):
        if t % cfg.seq_len == 0:
            for buf, s in zip(ro.states, state):
                buf[t // cfg.seq_len].copy_(s)
        tree_map(lambda buf, x: buf[t].copy_(x), ro.obs, obs)
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
            v = policy.value(obs_to_tensor(obs_space, final, device), tuple(s[:, idx] for s in out.state),
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


def _to_sequences(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[T, B, ...] -> [seq_len, K*B, ...] with column k*B + b = steps k*seq_len.. of env b."""
    T, B = x.shape[:2]
    K = T // seq_len
    if K == 1:
        return x
    return x.reshape(K, seq_len, B, *x.shape[2:]).transpose(0, 1).reshape(seq_len, K * B, *x.shape[2:])


def update(policy: ActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout,
           advantages: torch.Tensor, returns: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """PPO epochs over whole-sequence minibatches; returns loss statistics (tensors)."""
    L = cfg.seq_len
    seq = lambda x: _to_sequences(x, L)  # noqa: E731
    obs = tree_map(seq, ro.obs)
    reset, actions = seq(ro.reset), seq(ro.actions)
    prev_a, prev_r = seq(ro.prev_action), seq(ro.prev_reward)
    old_logp, old_v = seq(ro.logprobs), seq(ro.values)
    adv_all, ret_all = seq(advantages), seq(returns)
    # [K, layers, B, H] -> [layers, K*B, H]
    states0 = tuple(s.permute(1, 0, 2, 3).reshape(s.shape[1], -1, s.shape[3]) for s in ro.states)
    num_seq = reset.shape[1]
    mb_size = num_seq // cfg.num_minibatches
    params = [p for p in policy.parameters() if p.requires_grad]
    sums = {k: torch.zeros((), device=reset.device) for k in
            ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
             "uniform_kl")}
    count = 0
    for _epoch in range(cfg.update_epochs):
        perm = torch.randperm(num_seq, device=reset.device)
        for start in range(0, num_seq, mb_size):
            if cfg.num_minibatches == 1:
                sel = lambda x: x  # noqa: E731
            else:
                idx = perm[start:start + mb_size]
                sel = lambda x, idx=idx: x[:, idx]  # noqa: E731
            logp, entropy, value, uniform_kl = policy.evaluate(
                tree_map(sel, obs), tuple(s[:, idx] for s in states0) if cfg.num_minibatches > 1 else states0,
                sel(reset), sel(actions), sel(prev_a), sel(prev_r), with_uniform_kl=True)
            mb_adv, mb_ret, mb_v = sel(adv_all), sel(ret_all), sel(old_v)
            logratio = logp - sel(old_logp)
            ratio = logratio.exp()
            with torch.no_grad():
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
            if cfg.norm_adv:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio,
                                -mb_adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            if cfg.clip_vloss:
                v_clipped = mb_v + (value - mb_v).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((value - mb_ret) ** 2, (v_clipped - mb_ret) ** 2).mean()
            else:
                v_loss = 0.5 * ((value - mb_ret) ** 2).mean()
            ent, kl_u = entropy.mean(), uniform_kl.mean()
            loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss + cfg.uniform_kl_coef * kl_u

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} (gradient norm {grad_norm.item()}): lower "
                    "--learning-rate or --max-grad-norm")
            optimizer.step()
            for k, v in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", ent),
                         ("approx_kl", approx_kl), ("old_approx_kl", old_approx_kl),
                         ("clipfrac", clipfrac), ("uniform_kl", kl_u)):
                sums[k] += v.detach()
            count += 1
        if cfg.target_kl is not None and distributed.mean(approx_kl).item() > cfg.target_kl:
            break
    out = {k: v / count for k, v in sums.items()}
    y, pred = returns.flatten(), ro.values.flatten()
    var_y = y.var()
    out["explained_variance"] = torch.where(var_y > 0, 1 - (y - pred).var() / var_y, torch.nan)
    return out


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

class _StopFlag:
    """First Ctrl-C: finish the current update, save, stop. Second Ctrl-C: abort at once."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, venv, policy: ActorCritic, run_dir: str, device: torch.device,
          resume: dict | None = None, stop: Callable[[int], bool] | None = None,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``policy`` on ``venv`` with PPO and write logs, checkpoints and summary.json.

    Args:
        cfg: the run's configuration.
        venv: a gymnasium VectorEnv with ``cfg.num_envs`` envs (SAME_STEP autoreset).
        policy: the actor-critic, already on ``device``.
        run_dir: the run folder (exists).
        device: learner device.
        resume: a loaded checkpoint (``agents.checkpoint.load``) to continue from.
        stop: optional ``stop(update) -> bool`` checked after each update (for tests and embedding).
        on_progress: optional callback receiving the progress dict after each update.

    Returns:
        The summary dict (also written to ``run_dir/summary.json``); ``status`` is "finished",
        "interrupted" or "diverged".
    """
    from tqdm import tqdm

    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    local = distributed.local_config(cfg)  # under torchrun: this rank's envs and seed
    ro = Rollout(local, policy, device)
    stats, timers = EpisodeStats(), Timers()
    logger = (Logger(run_dir, purge_step=resume["global_step"] if resume else None)
              if distributed.is_main() else distributed.NullLogger())
    global_step, update_idx, wall_before = 0, 0, 0.0
    best_success: float | None = None
    action_log: list[torch.Tensor] = []
    if resume is not None:
        policy.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        global_step, update_idx = resume["global_step"], resume["update"]
        wall_before, best_success = resume["wall_time_s"], resume["best_success_rate"]
        stats.load_state_dict(resume["stats"])
        if distributed.world_size() > 1:  # rank 0's recorded actions fit only its envs: re-seed
            resume = {**resume, "actions": None}
        carry = ckpt.restore_envs(resume, venv, policy, local, device, action_log)
        ckpt.set_rng_state(resume["rng"])
        if distributed.world_size() > 1:
            torch.manual_seed(local.seed + global_step)
    else:
        carry = initial_carry(policy, venv, local, device)

    def save() -> str:
        if not distributed.is_main():  # rank 0 alone writes
            return ckpt.path(run_dir)
        return ckpt.save(run_dir, cfg=cfg, policy=policy, optimizer=optimizer, global_step=global_step,
                         update=update_idx, wall_time_s=wall_before + time.perf_counter() - start,
                         carry=carry, stats=stats, best_success_rate=best_success,
                         action_log=action_log if cfg.exact_resume and local is cfg else None)

    start = time.perf_counter()
    start_step = global_step
    totals = {"env": 0.0, "inference": 0.0, "learn": 0.0}  # seconds in this process
    seen = dict.fromkeys(totals, 0.0)
    status = "finished"
    bar = tqdm(total=cfg.num_updates * cfg.batch_size, initial=global_step, unit="step", unit_scale=True,
               dynamic_ncols=True, disable=not cfg.progress or not distributed.is_main(), desc="train",
               smoothing=0.1)
    learner = distributed.wrap(policy)  # under torchrun: DDP averages the gradients over ranks
    with _StopFlag() as interrupted:
        while update_idx < cfg.num_updates:
            if cfg.anneal_lr:
                frac = 1.0 - update_idx / cfg.num_updates
                for group in optimizer.param_groups:
                    group["lr"] = frac * cfg.learning_rate
            policy.eval()
            carry = collect(policy, venv, ro, carry, local, stats, timers, device)
            if cfg.exact_resume:
                action_log.append(ckpt.compact_actions(ro.actions))
            global_step += cfg.batch_size

            l0 = time.perf_counter()
            policy.train()
            advantages, returns = gae(ro.rewards, ro.values, ro.terminated, ro.truncated, ro.next_value,
                                      ro.final_values, cfg.gamma, cfg.gae_lambda)
            try:
                losses = update(learner, optimizer, ro, advantages, returns, cfg)
            except NonFiniteLossError as err:
                status = f"diverged: {err}"
                break
            timers.learn += time.perf_counter() - l0
            update_idx += 1

            episodes = stats.flush()
            recent_return, recent_success = stats.recent()
            best_success = stats.best_success(best_success)
            elapsed = time.perf_counter() - start
            sps = (global_step - start_step) / max(elapsed, 1e-9)
            for k in totals:
                totals[k] += getattr(timers, k) - seen[k]
                seen[k] = getattr(timers, k)
            if update_idx % cfg.log_every == 0 or update_idx == cfg.num_updates:
                _log(logger, policy, global_step, update_idx, cfg, episodes, losses, timers, sps,
                     optimizer.param_groups[0]["lr"])
                timers.reset()
                seen = dict.fromkeys(seen, 0.0)
            if (cfg.eval_every and update_idx % cfg.eval_every == 0 and update_idx < cfg.num_updates
                    and distributed.is_main()):
                interim_eval(logger, policy, cfg, device, global_step)
            progress = {"step": global_step, "update": update_idx, "sps": sps, "return": recent_return,
                        "success": recent_success}
            bar.update(cfg.batch_size)
            bar.set_postfix_str(_postfix(progress), refresh=False)
            if on_progress is not None:
                on_progress(progress)
            if update_idx % cfg.save_every == 0 and update_idx < cfg.num_updates:
                save()
            halt = interrupted.set or (stop is not None and stop(update_idx))
            if distributed.any_rank(halt, device):  # every rank stops after the same update
                status = "interrupted"
                break
    bar.close()
    checkpoint_path = ckpt.path(run_dir) if status.startswith("diverged") else save()
    wall = wall_before + time.perf_counter() - start
    summary = finish_run(cfg if distributed.is_main() else dataclasses.replace(cfg, eval_episodes=0),
                         policy, device, logger, algo="ppo", status=status, stats=stats,
                         global_step=global_step, updates=update_idx, wall=wall,
                         best_success=best_success, checkpoint=checkpoint_path, run_dir=run_dir,
                         perf_s=totals)
    distributed.barrier()  # the other ranks wait for rank 0's evaluation and summary.json
    return summary


def interim_eval(logger: Logger, policy: ActorCritic, cfg: TrainConfig, device: torch.device, step: int) -> None:
    """32 greedy episodes in fresh envs, logged as charts/eval_*; touches no training RNG."""
    result = evaluate(policy, cfg, device, episodes=32, greedy=True)
    logger.scalar("charts/eval_return", result["return_mean"], step)
    if result["success_rate"] is not None:
        logger.scalar("charts/eval_success_rate", result["success_rate"], step)


def _postfix(p: dict) -> str:
    parts = [f"SPS {p['sps']:,.0f}"]
    if p["return"] is not None:
        parts.append(f"return {p['return']:.3f}")
    if p["success"] is not None:
        parts.append(f"success {p['success']:.2f}")
    return ", ".join(parts)


def _log(logger: Logger, policy: ActorCritic, step: int, update_idx: int, cfg: TrainConfig,
         episodes: dict, losses: dict, timers: Timers, sps: float, lr: float) -> None:
    for k, v in episodes.items():
        logger.scalar(f"charts/{k}", v, step)
    logger.scalar("charts/SPS", sps, step)
    logger.scalar("charts/learning_rate", lr, step)
    for k, v in losses.items():
        logger.scalar(f"losses/{k}", float(v), step)
    total = timers.env + timers.inference + timers.learn
    for k in ("env", "inference", "learn"):
        seconds = getattr(timers, k)
        logger.scalar(f"perf/{k}_s", seconds, step)
        logger.scalar(f"perf/{k}_share", seconds / total if total > 0 else math.nan, step)
    gates = policy.core.gate_stats() if hasattr(policy.core, "gate_stats") else None
    if gates:
        g, tau = gates["gate"], gates["timescale"]
        logger.scalar("memory/gate_mean", float(g.mean()), step)
        logger.scalar("memory/timescale_mean", float(tau.mean()), step)
        logger.scalar("memory/timescale_median", float(tau.median()), step)
        if (update_idx // cfg.log_every) % 10 == 1 or update_idx == cfg.num_updates:
            logger.histogram("memory/gate", g, step)
            logger.histogram("memory/log10_timescale", tau.log10(), step)
