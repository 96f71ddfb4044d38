"""Reward scaling for PPO (``--norm-reward``): each rollout's rewards are divided by the running
standard deviation of the discounted return, as Gymnasium's ``NormalizeReward`` and
Stable-Baselines3's ``VecNormalize(norm_reward=True)`` do.

Per env, the discounted return so far ``G <- gamma * G + r`` (back to 0 after an episode ends) is
tracked across rollouts; every ``G`` of a rollout updates a running mean and variance (under torchrun,
over all ranks), and the rollout's rewards are divided by ``sqrt(var + eps)``. The rewards are not
shifted, so the sign of every reward and the optimal policy are kept. Only the learner sees the
scaled rewards: the policy's previous-reward input, the episode returns in the logs and the
evaluation keep the environment's own. The value head learns returns in the scaled units.
"""

from __future__ import annotations

from typing import Any

import torch

from agents import distributed


class RewardScaler:
    """Scales rollouts of ``num_envs`` envs; ``state_dict`` / ``load_state_dict`` for checkpoints."""

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8):
        self.gamma, self.eps = gamma, eps
        self.returns = torch.zeros(num_envs, dtype=torch.float64)  # [B] discounted return so far
        self.count, self.mean, self.var = 0.0, 0.0, 1.0

    def scale(self, rewards: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """The scale ``1 / std`` after adding this rollout's returns; rewards [T, B], done [T, B]
        (the episode ended at that step: terminated or truncated)."""
        r = rewards.detach().to("cpu", torch.float64)
        keep = (~done.detach().to("cpu")).to(torch.float64)
        g = self.returns
        seen = torch.empty_like(r)
        for t in range(r.shape[0]):
            g = self.gamma * g + r[t]
            seen[t] = g
            g = g * keep[t]
        self.returns = g
        self._add(seen.reshape(-1))
        return 1.0 / (self.var + self.eps) ** 0.5

    def _add(self, x: torch.Tensor) -> None:
        """Merge the batch ``x`` into the running moments (Chan et al.'s parallel update)."""
        moments = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(),
                               (x * x).sum()])
        moments = distributed.total(moments)
        n, s, ss = moments.tolist()
        mean = s / n
        var = max(ss / n - mean * mean, 0.0)
        total = self.count + n
        delta = mean - self.mean
        self.var = (self.var * self.count + var * n + delta * delta * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.clone(), "count": self.count, "mean": self.mean,
                "var": self.var}

    def load_state_dict(self, state: dict[str, Any], keep_returns: bool = True) -> None:
        """Restore the moments, and the per-env returns when ``keep_returns`` (the envs continue
        their episodes; re-seeded envs start new ones)."""
        self.count, self.mean, self.var = state["count"], state["mean"], state["var"]
        if keep_returns:
            self.returns = state["returns"].clone()
