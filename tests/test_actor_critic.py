"""Encoders from observation spaces, action heads, and act() (one step) == evaluate() (sequence)."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from policies.actor_critic import (
    ActionHead,
    ActorCritic,
    make_encoder,
    obs_to_tensor,
    obs_zeros,
    tree_map,
)

CORES = ["lstm", "gru", "urlstm", "urgru", "lstm:C-", "mlp", "stack:3"]


def sample_obs(space, lead, seed=0):
    """Random numpy observations of shape [*lead, ...]."""
    space.seed(seed)
    n = int(np.prod(lead))
    items = [space.sample() for _ in range(n)]
    def stack(sp, xs):
        if isinstance(sp, spaces.Dict):
            return {k: stack(s, [x[k] for x in xs]) for k, s in sp.spaces.items()}
        return np.stack([np.asarray(x) for x in xs]).reshape(*lead, *np.asarray(xs[0]).shape)
    return stack(space, items)


SPACES = {
    "vector": spaces.Box(-1, 1, (5,), np.float32),
    "matrix": spaces.Box(-1, 1, (3, 4), np.float32),
    "discrete": spaces.Discrete(6),
    "multidiscrete": spaces.MultiDiscrete([3, 4, 2]),
    "minigrid": spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8),
                             "direction": spaces.Discrete(4)}),
    "pixels": spaces.Box(0, 255, (40, 40, 3), np.uint8),
    "chw_float": spaces.Box(0, 1, (2, 6, 6), np.float32),
    "tiny_image": spaces.Box(0, 255, (3, 3, 3), np.uint8),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_encoder_shapes(name):
    space = SPACES[name]
    enc = make_encoder(space)
    obs = obs_to_tensor(space, sample_obs(space, (6,)), "cpu")
    out = enc(obs)
    assert out.shape == (6, enc.out_size) and torch.isfinite(out).all()


def test_unsupported_spaces_raise_value_error():
    with pytest.raises(ValueError, match="observation space"):
        make_encoder(spaces.Text(5))
    with pytest.raises(ValueError, match="action space"):
        ActionHead(spaces.Box(-1, 1, (2, 2)), 8)


def test_obs_zeros_dtypes():
    z = obs_zeros(SPACES["minigrid"], (3, 2), "cpu")
    assert z["image"].dtype == torch.uint8 and z["image"].shape == (3, 2, 7, 7, 3)
    assert z["direction"].dtype == torch.long and z["direction"].shape == (3, 2)


@pytest.mark.parametrize("space", [spaces.Discrete(5), spaces.Discrete(3, start=-1),
                                   spaces.MultiDiscrete([2, 5]), spaces.Box(-2, 2, (3,), np.float32)],
                         ids=["discrete", "discrete_start", "multidiscrete", "box"])
def test_action_head_logprob_and_entropy(space):
    torch.manual_seed(0)
    head = ActionHead(space, 8)
    with torch.no_grad():
        head.linear.weight.normal_()
        if head.kind == "gaussian":
            head.log_std.fill_(-0.3)
    h = torch.randn(7, 8)
    action, logprob = head.sample(h)
    assert action.shape == (7, *head.action_shape()) and action.dtype == head.action_dtype()
    lp, ent, kl = head.logprob_entropy(h, action)
    torch.testing.assert_close(lp, logprob)
    out = head.linear(h)
    if head.kind == "gaussian":
        dist = torch.distributions.Normal(out, head.log_std.exp())
        torch.testing.assert_close(lp, dist.log_prob(action).sum(-1))
        torch.testing.assert_close(ent, dist.entropy().sum(-1))
    else:
        cols = [action] if head.kind == "categorical" else action.unbind(-1)
        ref_lp, ref_ent = 0, 0
        for logits, a in zip(out.split(head.nvec, -1), cols):
            d = torch.distributions.Categorical(logits=logits)
            ref_lp, ref_ent = ref_lp + d.log_prob(a), ref_ent + d.entropy()
        torch.testing.assert_close(lp, ref_lp)
        torch.testing.assert_close(ent, ref_ent)
        # KL(uniform || pi) summed over components
        ref_kl = sum(torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=torch.zeros_like(logits)),
            torch.distributions.Categorical(logits=logits)) for logits in out.split(head.nvec, -1))
        torch.testing.assert_close(kl, ref_kl)
    greedy, _ = head.sample(h, greedy=True)
    if head.kind == "categorical":
        assert torch.equal(greedy, out.argmax(-1))
    # one-hot / raw action encoding for the previous-action input
    enc = head.encode(action)
    assert enc.shape == (7, head.encoding_size)
    if head.kind != "gaussian":
        assert torch.all(enc.sum(-1) == len(head.nvec))


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("obs_name", ["vector", "minigrid"])
def test_act_steps_equal_evaluate_sequence(core, obs_name):
    """Stepping act() with carried state and resets gives the logprobs/values of evaluate()."""
    torch.manual_seed(0)
    obs_space, act_space = SPACES[obs_name], spaces.Discrete(4)
    policy = ActorCritic(obs_space, act_space, core=core, hidden_size=16, embed_size=12).double()
    T, B = 9, 3
    obs = obs_to_tensor(obs_space, sample_obs(obs_space, (T, B)), "cpu")
    obs = tree_map(lambda x: x.double() if x.is_floating_point() else x, obs)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 0] = reset[4, 1] = reset[5, 2] = reset[6, 1] = True
    torch.manual_seed(1)
    state0 = tuple(torch.randn_like(s) for s in policy.initial_state(B, "cpu"))
    state0 = tuple(s.double() for s in state0)
    actions = torch.randint(0, 4, (T, B))
    prev_action = torch.cat([torch.randint(0, 4, (1, B)), actions[:-1]])
    prev_reward = torch.randn(T, B, dtype=torch.float64)
    logp_seq, ent_seq, v_seq = policy.evaluate(obs, state0, reset, actions, prev_action, prev_reward)
    state = prev_state = state0
    for t in range(T):
        o = tree_map(lambda x: x[t], obs)
        x = policy._inputs(o, reset[t], prev_action[t], prev_reward[t], (B,))
        y, state = policy.core.step(x, state, reset[t])
        lp, ent, _ = policy.head.logprob_entropy(y, actions[t])
        v = policy.value_head(y).squeeze(-1)
        torch.testing.assert_close(lp, logp_seq[t])
        torch.testing.assert_close(v, v_seq[t])
        # act() gives the same value and a state of the same structure
        out = policy.act(o, prev_state, reset[t], prev_action[t], prev_reward[t])
        torch.testing.assert_close(out.value, v)
        for a, b in zip(out.state, state):
            torch.testing.assert_close(a, b)
        prev_state = state


def test_previous_action_and_reward_are_zeroed_at_episode_start():
    torch.manual_seed(0)
    policy = ActorCritic(SPACES["vector"], spaces.Discrete(3), core="mlp", hidden_size=8, embed_size=8)
    obs = torch.randn(4, 5)
    reset = torch.tensor([True, True, False, False])
    a = torch.tensor([2, 1, 2, 1])
    r = torch.tensor([5.0, -3.0, 5.0, -3.0])
    x = policy._inputs(obs, reset, a, r, (4,))
    x0 = policy._inputs(obs, reset, None, None, (4,))
    torch.testing.assert_close(x[:2], x0[:2])
    assert not torch.allclose(x[2:], x0[2:])


def test_core_parameters_keep_the_cores_own_initialisation():
    torch.manual_seed(0)
    from policies.cores import make_core
    policy = ActorCritic(SPACES["vector"], spaces.Discrete(3), core="urlstm", hidden_size=8, embed_size=8)
    torch.manual_seed(0)
    reference = make_core("urlstm", 8, 8)
    # the actor-critic builds its core after the encoder and heads, so compare statistics: UGI forget
    # biases are spread over a range, not re-initialised to a constant
    fb = [p for n, p in policy.core.named_parameters() if "forget_bias" in n]
    fb_ref = [p for n, p in reference.named_parameters() if "forget_bias" in n]
    assert len(fb) == len(fb_ref) >= 1
    assert fb[0].std() > 0.1


def test_box_and_multidiscrete_actions_through_act_and_evaluate():
    for act_space in (spaces.Box(-1, 1, (2,), np.float32), spaces.MultiDiscrete([3, 2])):
        policy = ActorCritic(SPACES["vector"], act_space, core="gru", hidden_size=8, embed_size=8)
        obs = torch.randn(3, 5)
        out = policy.act(obs, policy.initial_state(3, "cpu"), torch.ones(3, dtype=torch.bool))
        assert out.action.shape == (3, 2) and out.logprob.shape == (3,) and out.value.shape == (3,)
        T = 4
        acts = out.action.unsqueeze(0).expand(T, 3, 2).contiguous()
        lp, ent, v, kl = policy.evaluate(torch.randn(T, 3, 5), policy.initial_state(3, "cpu"),
                                         torch.zeros(T, 3, dtype=torch.bool), acts, acts, torch.zeros(T, 3),
                                         with_uniform_kl=True)
        if isinstance(act_space, spaces.Box):
            assert torch.all(kl == 0)
        assert lp.shape == ent.shape == v.shape == (T, 3)
        assert math.isfinite(float(lp.detach().sum()))
