"""GAE against a brute-force double loop of the formula, with terminations, truncations and resets."""

import pytest
import torch

from agents.returns import gae


def brute_force_gae(rewards, values, terminated, truncated, next_value, final_values, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l} over the rest of the episode, written as a double loop.

    delta_k = r_k + gamma * V_next(k) - V(s_k), where V_next(k) is 0 after a termination, the final
    observation's value after a truncation, V(s_{k+1}) otherwise (next_value after the last step).
    """
    T, B = rewards.shape
    adv = torch.zeros(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                if terminated[k, b]:
                    v_next = 0.0
                elif truncated[k, b]:
                    v_next = float(final_values[k, b])
                elif k + 1 < T:
                    v_next = float(values[k + 1, b])
                else:
                    v_next = float(next_value[b])
                total += weight * (float(rewards[k, b]) + gamma * v_next - float(values[k, b]))
                if terminated[k, b] or truncated[k, b]:
                    break
                weight *= gamma * lam
            adv[t, b] = total
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.5), (1.0, 1.0), (0.97, 0.0)])
def test_gae_matches_brute_force(seed, gamma, lam):
    g = torch.Generator().manual_seed(seed)
    T, B = 13, 5
    rewards = torch.randn(T, B, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, generator=g, dtype=torch.float64)
    next_value = torch.randn(B, generator=g, dtype=torch.float64)
    final_values = torch.randn(T, B, generator=g, dtype=torch.float64)
    terminated = torch.rand(T, B, generator=g) < 0.15
    truncated = torch.rand(T, B, generator=g) < 0.15  # some steps have both: termination wins
    adv, ret = gae(rewards, values, terminated, truncated, next_value, final_values, gamma, lam)
    ref = brute_force_gae(rewards, values, terminated, truncated, next_value, final_values, gamma, lam)
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret, ref + values)


def test_truncation_bootstraps_termination_does_not():
    # one env, one step, episode ends at step 0
    r, v = torch.tensor([[1.0]]), torch.tensor([[0.5]])
    nv, fv = torch.tensor([9.0]), torch.tensor([[2.0]])
    no = torch.tensor([[False]])
    yes = torch.tensor([[True]])
    adv_term, _ = gae(r, v, yes, no, nv, fv, 0.9, 0.95)
    adv_trunc, _ = gae(r, v, no, yes, nv, fv, 0.9, 0.95)
    adv_cont, _ = gae(r, v, no, no, nv, fv, 0.9, 0.95)
    assert adv_term.item() == pytest.approx(1.0 - 0.5)
    assert adv_trunc.item() == pytest.approx(1.0 + 0.9 * 2.0 - 0.5)
    assert adv_cont.item() == pytest.approx(1.0 + 0.9 * 9.0 - 0.5)


def test_no_flow_across_episode_end():
    T, B = 6, 1
    rewards = torch.zeros(T, B)
    rewards[4] = 100.0  # reward in the second episode
    terminated = torch.zeros(T, B, dtype=torch.bool)
    terminated[2] = True
    adv, _ = gae(rewards, torch.zeros(T, B), terminated, torch.zeros_like(terminated), torch.zeros(B),
                 None, 0.99, 0.95)
    assert torch.all(adv[:3] == 0)
    assert torch.all(adv[3:5] > 0)
