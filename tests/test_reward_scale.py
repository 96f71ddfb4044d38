"""--norm-reward: the running moments against a direct computation, the scaled rollout, what stays
unscaled, checkpoints and refusals."""

import numpy as np
import pytest
import torch

import train
from agents import checkpoint as ckpt
from agents.reward_scale import RewardScaler


def _direct_returns(rollouts, gamma):
    """Every discounted return G_t = gamma * G_{t-1} + r_t (0 after an episode ends), env by env."""
    B = rollouts[0][0].shape[1]
    g, seen = np.zeros(B), []
    for rewards, done in rollouts:
        for t in range(rewards.shape[0]):
            for b in range(B):
                g[b] = gamma * g[b] + float(rewards[t, b])
                seen.append(g[b])
                if done[t, b]:
                    g[b] = 0.0
    return np.array(seen)


def test_moments_match_a_direct_computation_over_rollouts():
    gen = torch.Generator().manual_seed(0)
    rollouts = [(torch.randn(7, 3, generator=gen) * 5 + 1, torch.rand(7, 3, generator=gen) < 0.2)
                for _ in range(4)]
    scaler = RewardScaler(3, gamma=0.9)
    for rewards, done in rollouts:
        scale = scaler.scale(rewards, done)
    seen = _direct_returns(rollouts, 0.9)
    assert scaler.count == len(seen) == 4 * 7 * 3
    assert scaler.mean == pytest.approx(seen.mean(), rel=1e-9)
    assert scaler.var == pytest.approx(seen.var(), rel=1e-9)
    assert scale == pytest.approx(1 / np.sqrt(seen.var() + 1e-8), rel=1e-9)
    # the return of an episode still running carries over into the next rollout
    alive = ~rollouts[-1][1][-1]
    assert (scaler.returns[alive] != 0).all() and (scaler.returns[~alive] == 0).all()


def test_state_round_trip_and_reseeded_envs_start_new_returns():
    scaler = RewardScaler(2, gamma=0.99)
    scaler.scale(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2, dtype=torch.bool))
    state = scaler.state_dict()
    again, fresh = RewardScaler(2, 0.99), RewardScaler(2, 0.99)
    again.load_state_dict(state)
    fresh.load_state_dict(state, keep_returns=False)
    assert again.state_dict()["count"] == 4 and torch.equal(again.returns, scaler.returns)
    assert fresh.var == scaler.var and torch.equal(fresh.returns, torch.zeros(2, dtype=torch.float64))


TINY = ["--env", "urlstm/VisualMatchPassive-v0", "--env-kwargs", "distractor_steps=5", "--num-envs", "4",
        "--num-steps", "16", "--seq-len", "8", "--hidden-size", "16", "--embed-size", "16", "--total-steps", "128",
        "--eval-episodes", "4", "--no-progress", "--device", "cpu"]


def test_a_run_learns_from_scaled_rewards_and_logs_the_envs_own(tmp_path):
    code, s = train.run_train([*TINY, "--norm-reward", "--logdir", str(tmp_path), "--run-name", "n"])
    assert code == 0 and s["status"] == "finished"
    saved = ckpt.load(s["run_dir"])["reward_scale"]
    assert saved["count"] == 128 and saved["var"] > 0
    assert saved["var"] != pytest.approx(1.0)  # the scale is not 1: scaled rewards would not be whole
    # the logged episode returns are the env's: apples pay 1 and the match 5, so whole numbers
    returns = ckpt.load(s["run_dir"])["stats"]["returns"]
    assert returns and all(r == int(r) for r in returns)
    code, plain = train.run_train([*TINY, "--logdir", str(tmp_path), "--run-name", "p"])
    assert ckpt.load(plain["run_dir"])["reward_scale"] is None


def test_impala_refuses_it(capsys):
    assert train.main(["--algo", "impala", "--norm-reward", "--total-steps", "64"]) == 2
    assert "--norm-reward needs --algo ppo" in capsys.readouterr().err
