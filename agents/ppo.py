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
from policies.actor_critic import ActorCritic, State, tree_map

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


def _sequence_states(states: State) -> State:
    """Each [K, layers, B, H] -> [layers, K*B, H], column k*B + b: the start of sequence k of env b."""
    return tuple(s.permute(1, 0, 2, 3).reshape(s.shape[1], -1, s.shape[3]) for s in states)


def refreshed_states(policy: ActorCritic, ro: Rollout) -> State:
    """``ro.states`` recomputed with ``policy``'s current weights (--refresh-states): the rollout
    re-run from its first stored state in eval mode, as it was acted, resets applied inside.

    Returns:
        Each part [K, *state_shape] as ``ro.states``; ``ro`` is left as it was.
    """
    training = policy.training
    policy.eval()
    try:
        return policy.sequence_start_states(ro.obs, tuple(s[0] for s in ro.states), ro.reset,
                                            ro.prev_action, ro.prev_reward, ro.seq_len)
    finally:
        policy.train(training)


def update(policy: ActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout,
           advantages: torch.Tensor, returns: torch.Tensor, cfg: TrainConfig,
           refresh: Callable[[], State] | None = None) -> dict[str, torch.Tensor]:
    """PPO epochs over whole-sequence minibatches; returns loss statistics (tensors), among them
    ``first_old_approx_kl``, the first minibatch's (0 up to rounding: its sequences re-run from the
    stored states to the acting log-probs).

    ``refresh() -> states`` (each [K, *state_shape], e.g. ``refreshed_states``) replaces the stored
    start states before each epoch after the first.
    """
    L = cfg.seq_len
    seq = lambda x: _to_sequences(x, L)
    obs = tree_map(seq, ro.obs)
    reset, actions = seq(ro.reset), seq(ro.actions)
    prev_a, prev_r = seq(ro.prev_action), seq(ro.prev_reward)
    old_logp, old_v = seq(ro.logprobs), seq(ro.values)
    adv_all, ret_all = seq(advantages), seq(returns)
    states0 = _sequence_states(ro.states)
    num_seq = reset.shape[1]
    mb_size = num_seq // cfg.num_minibatches
    params = [p for p in policy.parameters() if p.requires_grad]
    sums = {k: torch.zeros((), device=reset.device) for k in
            ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
             "uniform_kl")}
    count = 0
    for epoch in range(cfg.update_epochs):
        if refresh is not None and epoch > 0:
            states0 = _sequence_states(refresh())
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

            if count == 0:
                first_old_approx_kl = old_approx_kl
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
    out = {k: v / count for k, v in sums.items()} | {"first_old_approx_kl": first_old_approx_kl}
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
    refresh = None  # with one sequence per rollout its start state is the rollout's: nothing to do
    if cfg.refresh_states and local.seq_len < local.num_steps:
        def refresh() -> State:
            with run.timing("refresh_states"):
                return refreshed_states(policy, ro)
    with run:
        while run.next_update():
            policy.eval()
            carry = collect(policy, venv, ro, carry, run.stats, run.timers)
            run.collected(cfg.batch_size, carry, ro.actions)  # for checkpoints and exact resume
            with run.timing("learn"):
                policy.train()
                if run.reward_scale is not None:
                    ro.rewards.mul_(run.reward_scale.scale(ro.rewards, ro.terminated | ro.truncated))
                advantages, returns = gae(ro.rewards, ro.values, ro.terminated, ro.truncated,
                                          ro.next_value, ro.final_values, cfg.gamma, cfg.gae_lambda)
                losses = update(learner, optimizer, ro, advantages, returns, cfg, refresh)
            run.end_update(losses)
    return run.finish()
