"""V-trace against a brute-force transcription of Espeholt et al. (2018), eq. 1, with terminations
and truncations inside the unroll, batch size 1, and shape errors."""

import math

import pytest
import torch

from agents.returns import gae, vtrace


def brute_force_vtrace(mu_logp, pi_logp, rewards, values, terminated, truncated, bootstrap,
                       final_values, gamma, rho_bar, c_bar, lam=1.0):
    """v_s = V(x_s) + sum_{t=s}^{e} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t V, written as loops,
    with c_i = lam min(c_bar, pi/mu) (the paper's remark 2).

    delta_t V = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t)); gamma_t = 0 after a termination; the next
    value is the final observation's after a truncation and the bootstrap value after the last step;
    the sum stops at the episode's last step e.
    Policy gradient: rho_s (r_s + gamma_s v_{s+1} - V(x_s)).
    """
    T, B = rewards.shape
    vs = torch.zeros(T, B, dtype=torch.float64)
    adv = torch.zeros(T, B, dtype=torch.float64)

    def ratio(t, b):
        return math.exp(float(pi_logp[t, b]) - float(mu_logp[t, b]))

    def next_value(k, b):
        if terminated[k, b]:
            return 0.0
        if truncated[k, b]:
            return float(final_values[k, b])
        return float(values[k + 1, b]) if k + 1 < T else float(bootstrap[b])

    for b in range(B):
        for s in range(T):
            total = 0.0
            for t in range(s, T):
                trace = gamma ** (t - s)
                for i in range(s, t):
                    trace *= lam * min(c_bar, ratio(i, b))
                delta = min(rho_bar, ratio(t, b)) * (float(rewards[t, b]) + gamma * next_value(t, b)
                                                     - float(values[t, b]))
                total += trace * delta
                if terminated[t, b] or truncated[t, b]:
                    break
            vs[s, b] = float(values[s, b]) + total
    for b in range(B):
        for s in range(T):
            if terminated[s, b]:
                v_next = 0.0
            elif truncated[s, b]:
                v_next = float(final_values[s, b])
            elif s + 1 < T:
                v_next = float(vs[s + 1, b])
            else:
                v_next = float(bootstrap[b])
            adv[s, b] = min(rho_bar, ratio(s, b)) * (float(rewards[s, b]) + gamma * v_next
                                                      - float(values[s, b]))
    return vs, adv


def random_unroll(T, B, seed, p_end=0.15, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    terminated = torch.rand(T, B, generator=g) < p_end
    truncated = torch.rand(T, B, generator=g) < p_end
    return dict(mu_logp=-r(T, B).abs(), pi_logp=-r(T, B).abs(), rewards=r(T, B), values=r(T, B),
                terminated=terminated, truncated=truncated, bootstrap=r(B), final_values=r(T, B))


def call(u, gamma, rho_bar, c_bar, lam=1.0):
    return vtrace(u["mu_logp"], u["pi_logp"], u["rewards"], u["values"], u["terminated"],
                  u["truncated"], u["bootstrap"], u["final_values"], gamma, rho_bar, c_bar, lam)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,rho_bar,c_bar", [(0.99, 1.0, 1.0), (0.9, 2.0, 0.5), (1.0, 0.7, 0.7),
                                                 (0.0, 1.0, 1.0), (0.95, 1e9, 1e9)])
def test_vtrace_matches_brute_force(seed, gamma, rho_bar, c_bar):
    u = random_unroll(9, 4, seed)
    vs, adv = call(u, gamma, rho_bar, c_bar)
    ref_vs, ref_adv = brute_force_vtrace(*u.values(), gamma, rho_bar, c_bar)
    torch.testing.assert_close(vs, ref_vs)
    torch.testing.assert_close(adv, ref_adv)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lam,c_bar", [(0.95, 1.0), (0.5, 2.0), (0.0, 1.0)])
def test_vtrace_lambda_matches_brute_force(seed, lam, c_bar):
    u = random_unroll(9, 4, seed)
    vs, adv = call(u, 0.97, 1.0, c_bar, lam)
    ref_vs, ref_adv = brute_force_vtrace(*u.values(), 0.97, 1.0, c_bar, lam)
    torch.testing.assert_close(vs, ref_vs)
    torch.testing.assert_close(adv, ref_adv)


@pytest.mark.parametrize("rho_bar", [1.0, 0.5, 1e9])
def test_unweighted_advantage_is_the_weighted_one_without_rho(rho_bar):
    """pg_rho=False (for the clipped surrogate, whose ratio weights the advantage): same targets,
    advantage = the brute-force one divided by rho_t = min(rho_bar, pi / mu)."""
    u = random_unroll(9, 4, 5)
    vs, adv = vtrace(u["mu_logp"], u["pi_logp"], u["rewards"], u["values"], u["terminated"],
                     u["truncated"], u["bootstrap"], u["final_values"], 0.97, rho_bar, 1.0, 0.9,
                     pg_rho=False)
    ref_vs, ref_adv = brute_force_vtrace(*u.values(), 0.97, rho_bar, 1.0, 0.9)
    rho = (u["pi_logp"] - u["mu_logp"]).exp().clamp(max=rho_bar)
    torch.testing.assert_close(vs, ref_vs)
    torch.testing.assert_close(adv * rho, ref_adv)


def test_terminations_and_truncations_inside_the_unroll():
    """Hand-placed ends: a termination (no bootstrap) and a truncation (final obs value) mid-unroll,
    and both flags at once (termination wins); traces never cross them."""
    T, B = 8, 3
    u = random_unroll(T, B, 7, p_end=0.0)
    u["terminated"][2, 0] = True
    u["truncated"][5, 0] = True
    u["truncated"][3, 1] = True
    u["terminated"][3, 1] = True
    u["truncated"][T - 1, 2] = True
    vs, adv = call(u, 0.97, 1.0, 1.0)
    ref_vs, ref_adv = brute_force_vtrace(*u.values(), 0.97, 1.0, 1.0)
    torch.testing.assert_close(vs, ref_vs)
    torch.testing.assert_close(adv, ref_adv)
    # changing what lies after an episode end changes nothing before it
    u2 = {k: v.clone() for k, v in u.items()}
    u2["rewards"][3:, 0] += 5.0
    u2["bootstrap"][2] += 3.0  # env 2 truncates at the last step: the bootstrap value is not used
    vs2, _ = call(u2, 0.97, 1.0, 1.0)
    torch.testing.assert_close(vs2[:3, 0], vs[:3, 0])
    torch.testing.assert_close(vs2[:, 2], vs[:, 2])


def test_batch_size_one_and_single_step():
    u = random_unroll(6, 1, 3)
    vs, adv = call(u, 0.99, 1.0, 1.0)
    ref_vs, ref_adv = brute_force_vtrace(*u.values(), 0.99, 1.0, 1.0)
    assert vs.shape == (6, 1)
    torch.testing.assert_close(vs, ref_vs)
    torch.testing.assert_close(adv, ref_adv)
    u = random_unroll(1, 2, 4)
    torch.testing.assert_close(call(u, 0.9, 1.0, 1.0)[0],
                               brute_force_vtrace(*u.values(), 0.9, 1.0, 1.0)[0])


def test_on_policy_vtrace_is_the_lambda_one_return():
    """With pi == mu and no clipping, v_s is the n-step return: GAE with lambda = 1 plus V."""
    u = random_unroll(10, 5, 11)
    u["pi_logp"] = u["mu_logp"].clone()
    vs, adv = call(u, 0.95, 1.0, 1.0)
    _, returns = gae(u["rewards"], u["values"], u["terminated"], u["truncated"], u["bootstrap"],
                     u["final_values"], 0.95, 1.0)
    torch.testing.assert_close(vs, returns)


def test_on_policy_vtrace_with_lambda_is_the_gae_return():
    """With pi == mu, v_s is GAE's return with the same lambda."""
    u = random_unroll(10, 5, 12)
    u["pi_logp"] = u["mu_logp"].clone()
    vs, _ = call(u, 0.95, 1.0, 1.0, lam=0.9)
    _, returns = gae(u["rewards"], u["values"], u["terminated"], u["truncated"], u["bootstrap"],
                     u["final_values"], 0.95, 0.9)
    torch.testing.assert_close(vs, returns)


def test_float32_and_no_grad():
    u = random_unroll(5, 2, 5, dtype=torch.float32)
    u["pi_logp"].requires_grad_(True)
    vs, adv = call(u, 0.99, 1.0, 1.0)
    assert vs.dtype == torch.float32 and not vs.requires_grad and not adv.requires_grad


@pytest.mark.parametrize("key,shape", [("values", (9, 3)), ("mu_logp", (8, 4)), ("pi_logp", (4, 9)),
                                       ("terminated", (9,)), ("final_values", (9, 4, 1)),
                                       ("bootstrap", (9,)), ("bootstrap", (1, 4))])
def test_mismatched_shapes_raise(key, shape):
    u = random_unroll(9, 4, 0)
    u[key] = torch.zeros(shape, dtype=torch.bool if key == "terminated" else torch.float64)
    with pytest.raises(ValueError, match="shape"):
        call(u, 0.99, 1.0, 1.0)


def test_rewards_must_be_time_major_2d():
    u = random_unroll(9, 4, 0)
    u["rewards"] = u["rewards"].reshape(-1)
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        call(u, 0.99, 1.0, 1.0)


def test_non_positive_clip_raises():
    with pytest.raises(ValueError, match="positive"):
        call(random_unroll(3, 2, 0), 0.99, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        call(random_unroll(3, 2, 0), 0.99, 1.0, 1.0, lam=1.5)
