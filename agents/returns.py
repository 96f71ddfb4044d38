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
