"""Recurrent PPO (clipped objective, GAE) with whole-sequence minibatches: update() and train();
the rollout (``Rollout``, ``collect``) is ``agents.rollout``, the run around the updates
``agents.runloop``.

Recurrence: the rollout keeps the core state at the start of every training sequence of ``seq_len``
steps; minibatches are whole sequences re-run from those states, with episode resets applied inside
the sequence by the core. With ``seq_len == num_steps`` the gradient spans the whole rollout, and a
rollout that is a multiple of a fixed episode length (envs start together) holds whole episodes.
Termination and truncation stay apart: a truncated episode bootstraps from the value of its final
observation computed with the current recurrent state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from agents import distributed
from agents.config import TrainConfig
from agents.returns import gae
from agents.rollout import Rollout, collect
from agents.runloop import RunLoop, check_finite
from policies.actor_critic import ActorCritic, tree_map

# ---------------------------------------------------------------------------------------------
# update
# ---------------------------------------------------------------------------------------------

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
    seq = lambda x: _to_sequences(x, L)
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
                sel = lambda x: x
            else:
                idx = perm[start:start + mb_size]
                sel = lambda x, idx=idx: x[:, idx]
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
            check_finite(loss, nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
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


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, venv, policy: ActorCritic, run_dir: str, device: torch.device,
          resume: dict | None = None, stop: Callable[[int], bool] | None = None,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``policy`` on ``venv`` with PPO and write logs, checkpoints and summary.json.

    Args:
        cfg: the run's configuration.
        venv: a gymnasium VectorEnv with this rank's ``num_envs`` envs (SAME_STEP autoreset).
        policy: the actor-critic, already on ``device``.
        run_dir: the run folder (exists).
        device: learner device.
        resume: a loaded checkpoint (``agents.checkpoint.load``) to continue from.
        stop: optional ``stop(update) -> bool`` checked after each update (for tests and embedding).
        on_progress: optional callback receiving the progress dict after each update.

    Returns:
        The summary dict (also written to ``run_dir/summary.json``); ``status`` is "finished",
        "interrupted" or "diverged: ...".
    """
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    local = distributed.local_config(cfg)  # under torchrun: this rank's envs and seed
    ro = Rollout.zeros(policy, local.num_steps, local.num_envs, local.seq_len, device)
    run = RunLoop(cfg, policy, optimizer, run_dir, device, resume, stop, on_progress, algo="ppo",
                  venv=venv, seed=local.seed)
    carry = run.carry  # the envs' first observation and memory (on resume: where the run stopped)
    learner = distributed.wrap(policy)  # under torchrun: DDP averages the gradients over ranks
    with run:
        while run.next_update():
            policy.eval()
            carry = collect(policy, venv, ro, carry, run.stats, run.timers)
            run.collected(cfg.batch_size, carry, ro.actions)  # for checkpoints and exact resume
            with run.timing("learn"):
                policy.train()
                advantages, returns = gae(ro.rewards, ro.values, ro.terminated, ro.truncated,
                                          ro.next_value, ro.final_values, cfg.gamma, cfg.gae_lambda)
                losses = update(learner, optimizer, ro, advantages, returns, cfg)
            run.end_update(losses)
    return run.finish()
