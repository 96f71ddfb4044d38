"""Return estimators: pure functions on time-major [T, B] tensors."""

from __future__ import annotations

import torch


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_value: torch.Tensor,
    final_values: torch.Tensor | None,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) with termination and truncation apart.

    Step ``t`` of env ``b`` saw observation ``t``, took an action, got ``rewards[t]``; the episode
    ended there if ``terminated[t]`` (no bootstrap: the value after a terminal state is 0) or
    ``truncated[t]`` (time limit: bootstrap from ``final_values[t]``, the value of the episode's final
    observation computed with the recurrent state after step ``t``). Otherwise the next value is
    ``values[t + 1]``, or ``next_value`` after the last step. Advantages never flow across an
    episode end. If both flags are set, termination wins.

    Args:
        rewards: [T, B] float.
        values: [T, B] float, V(obs_t) from the rollout.
        terminated: [T, B] bool.
        truncated: [T, B] bool.
        next_value: [B] float, V of the observation after the last step.
        final_values: [T, B] float or None (read only where ``truncated & ~terminated``).
        gamma: discount.
        gae_lambda: GAE lambda.

    Returns:
        (advantages [T, B], returns [T, B]) with ``returns = advantages + values``.
    """
    num_steps = rewards.shape[0]
    ended = terminated | truncated                                   # [T, B]
    if final_values is None:
        final_values = torch.zeros_like(values)
    zero = torch.zeros_like(next_value)
    # value used for bootstrapping after step t
    following = torch.cat([values[1:], next_value.unsqueeze(0)], 0)  # [T, B]
    bootstrap = torch.where(truncated, final_values, following)
    bootstrap = torch.where(terminated, zero.unsqueeze(0).expand_as(values), bootstrap)
    deltas = rewards + gamma * bootstrap - values                    # [T, B]
    carry = (1.0 - ended.to(values.dtype)) * (gamma * gae_lambda)    # [T, B]
    advantages = torch.empty_like(values)                            # [T, B]
    last = zero                                                      # [B]
    for t in range(num_steps - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages, advantages + values


@torch.no_grad()
def vtrace(
    behaviour_logprobs: torch.Tensor,
    target_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    bootstrap_value: torch.Tensor,
    final_values: torch.Tensor | None,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lam: float = 1.0,
    pg_rho: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, eq. 1 and section 4.2).

    With ``rho_t = min(rho_bar, pi/mu)`` and ``c_t = lam * min(c_bar, pi/mu)`` (pi: target policy,
    mu: behaviour policy), ``delta_t = rho_t (r_t + gamma_t V_next(t) - V(x_t))`` and

        v_s = V(x_s) + sum_{t=s}^{e} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t

    where ``e`` is the last step of the episode inside the unroll (or T - 1). The discount
    ``gamma_t`` is 0 after a termination and ``gamma`` otherwise. ``V_next(t)`` is
    ``values[t + 1]``, ``final_values[t]`` after a truncation (the value of the episode's final
    observation) or ``bootstrap_value`` after the last step. Traces never cross an episode end. The
    policy-gradient advantage is ``rho_t (r_t + gamma_t v_next(t) - V(x_t))`` with ``v_next(t)`` the
    V-trace target of the next step (``final_values[t]`` / ``bootstrap_value`` where that is the
    bootstrap). If both flags are set, termination wins.

    Args:
        behaviour_logprobs: [T, B] log mu(a_t | x_t) of the actor that acted.
        target_logprobs: [T, B] log pi(a_t | x_t) of the learner's current policy.
        rewards: [T, B] float.
        values: [T, B] V(x_t) of the learner.
        terminated: [T, B] bool.
        truncated: [T, B] bool.
        bootstrap_value: [B] V of the observation after the last step.
        final_values: [T, B] or None (read only where ``truncated & ~terminated``).
        gamma: discount.
        rho_bar: clip of the importance weights in the TD errors and the policy gradient.
        c_bar: clip of the trace coefficients.
        lam: the paper's lambda (its remark 2), a factor on every trace coefficient: 1 gives the
            n-step return on-policy, lam < 1 the TD(lambda) return (GAE's lambda), lower variance.
        pg_rho: multiply the policy-gradient advantage by ``rho_t`` (False: the advantage alone,
            for a loss that weights it by the importance ratio itself, as PPO's clipped surrogate).

    Returns:
        (vs [T, B] value targets, pg_advantages [T, B]).

    Raises:
        ValueError: mismatched shapes, or a clip threshold <= 0.
    """
    shape = tuple(rewards.shape)
    if len(shape) != 2:
        raise ValueError(f"vtrace expects time-major [T, B] tensors, got rewards of shape {shape}")
    named = {"behaviour_logprobs": behaviour_logprobs, "target_logprobs": target_logprobs,
             "values": values, "terminated": terminated, "truncated": truncated}
    if final_values is not None:
        named["final_values"] = final_values
    for name, x in named.items():
        if tuple(x.shape) != shape:
            raise ValueError(f"vtrace: {name} has shape {tuple(x.shape)}, rewards {shape}")
    if tuple(bootstrap_value.shape) != shape[1:]:
        raise ValueError(f"vtrace: bootstrap_value has shape {tuple(bootstrap_value.shape)}, "
                         f"expected [B] = {shape[1:]}")
    if not (rho_bar > 0 and c_bar > 0):
        raise ValueError(f"vtrace: rho_bar ({rho_bar}) and c_bar ({c_bar}) must be positive")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"vtrace: lam ({lam}) must be in [0, 1]")

    num_steps = shape[0]
    ratio = (target_logprobs - behaviour_logprobs).exp()                  # [T, B]
    rho = ratio.clamp(max=rho_bar)                                        # [T, B]
    c = lam * ratio.clamp(max=c_bar)                                      # [T, B]
    zero = torch.zeros_like(values)
    if final_values is None:
        final_values = zero
    discount = gamma * (~terminated).to(values.dtype)                    # [T, B]
    following = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], 0)  # [T, B]
    v_next = torch.where(truncated, final_values, following)             # [T, B]
    deltas = rho * (rewards + discount * v_next - values)                # [T, B]
    # the trace continues into step t + 1 only inside an episode
    carry = gamma * c * (~(terminated | truncated)).to(values.dtype)     # [T, B]
    corrections = torch.empty_like(values)                               # [T, B] v_s - V(x_s)
    last = torch.zeros_like(bootstrap_value)                             # [B]
    for t in range(num_steps - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        corrections[t] = last
    vs = values + corrections                                            # [T, B]
    vs_following = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], 0)  # [T, B]
    vs_next = torch.where(truncated, final_values, vs_following)
    pg_advantages = rewards + discount * vs_next - values                # [T, B]
    return vs, rho * pg_advantages if pg_rho else pg_advantages
