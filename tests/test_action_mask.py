"""Action masking: masked actions are never sampled nor taken greedily, log-probs, entropy and the
uniform KL are the renormalised distribution's, bad masks raise ActionMaskError, and PPO, IMPALA and
the evaluation act and learn on the masked task (``strict=True``: a masked action raises) with the
mask stored, the learners re-running the acting log-probs exactly."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
import train
from agents import actor, impala, ppo
from agents import evaluate as ev
from agents.config import TrainConfig
from agents.returns import gae
from agents.rollout import EpisodeStats, Rollout, Timers, collect, initial_carry
from policies import ActionMaskError
from policies.actor_critic import ActionHead, ActorCritic, obs_to_tensor

CPU = torch.device("cpu")
TINY = ["--env", "masked-recall", "--env-kwargs", "length=3", "strict=True", "--num-envs", "4",
        "--hidden-size", "16", "--embed-size", "16", "--eval-episodes", "8", "--no-progress",
        "--device", "cpu", "--core", "lstm"]


def random_mask(n: int, nvec: list[int], generator: torch.Generator) -> torch.Tensor:
    """bool [n, sum(nvec)] with at least one allowed action per component."""
    parts = []
    for k in nvec:
        part = torch.rand(n, k, generator=generator) < 0.5
        part[torch.arange(n), torch.randint(k, (n,), generator=generator)] = True
        parts.append(part)
    return torch.cat(parts, -1)


@pytest.mark.parametrize("space", [spaces.Discrete(5), spaces.MultiDiscrete([3, 4])],
                         ids=["discrete", "multidiscrete"])
def test_masked_actions_are_never_drawn_and_terms_are_the_renormalised_ones(space):
    gen = torch.Generator().manual_seed(0)
    head = ActionHead(space, 8, gain=3.0)
    nvec, n = head.nvec, 4000
    h = torch.randn(n, 8, generator=gen)
    mask = random_mask(n, nvec, gen)
    logits = head.linear(h).detach()
    # the largest logit of every component is masked in the first rows: greedy must look past it
    for part, lg in zip(mask[:50].split(nvec, -1), logits[:50].split(nvec, -1)):
        part[torch.arange(50), lg.argmax(-1)] = False
        part[torch.arange(50), lg.argmin(-1)] = True
    cols = lambda a: [a] if head.kind == "categorical" else list(a.unbind(-1))  # noqa: E731
    for greedy in (False, True):
        with torch.no_grad():
            action, logprob = head.sample(h, greedy=greedy, mask=mask)
        for a, part in zip(cols(action), mask.split(nvec, -1)):
            assert part.gather(-1, a.unsqueeze(-1)).all(), "a masked action was chosen"
        if greedy:
            for a, part, lg in zip(cols(action), mask.split(nvec, -1), logits.split(nvec, -1)):
                assert torch.equal(a, lg.masked_fill(~part, -math.inf).argmax(-1))
    # renormalised Categorical by hand: p = exp(z) / sum_allowed exp(z), 0 where masked
    action, logprob = head.sample(h, mask=mask)
    lp, ent, kl = head.logprob_entropy(h, action, mask)
    torch.testing.assert_close(lp, logprob)
    ref_lp = ref_ent = ref_kl = 0.0
    for a, part, z in zip(cols(action), mask.split(nvec, -1), logits.double().split(nvec, -1)):
        e = torch.where(part, (z - z.max(-1, keepdim=True).values).exp(), 0.0)
        p = e / e.sum(-1, keepdim=True)
        logp = torch.where(part, p.log(), 0.0)
        ref_lp = ref_lp + p.gather(-1, a.unsqueeze(-1)).squeeze(-1).log()
        ref_ent = ref_ent - (p * logp).sum(-1)
        m = part.sum(-1).double()
        ref_kl = ref_kl + (torch.where(part, -m.log().unsqueeze(-1) - logp, 0.0)).sum(-1) / m
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl.double(), ref_kl, rtol=1e-5, atol=1e-5)
    # finite gradients; masked logits get none
    seen = []
    hook = head.linear.register_forward_hook(lambda m, i, out: seen.append(out))
    lp, ent, kl = head.logprob_entropy(h, action, mask)
    hook.remove()
    seen[0].retain_grad()
    (lp.sum() + ent.sum() + kl.sum()).backward()
    grad = seen[0].grad
    assert torch.isfinite(grad).all() and (grad[~mask] == 0).all() and (grad[mask] != 0).any()
    assert torch.isfinite(head.linear.weight.grad).all()


def test_frequencies_follow_the_renormalised_distribution():
    head = ActionHead(spaces.Discrete(4), 2)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.manual_seed(0)
    n = 20_000
    mask = torch.tensor([True, True, False, True]).expand(n, 4)
    with torch.no_grad():
        action, _ = head.sample(torch.zeros(n, 2), mask=mask)
    freq = torch.bincount(action, minlength=4).double() / n
    p = torch.tensor([1.0, math.e, 0.0, math.e ** 3], dtype=torch.double)
    torch.testing.assert_close(freq, p / p.sum(), atol=0.01, rtol=0)


def masked_space(width, n: int = 3):
    return spaces.Dict({"action_mask": spaces.Box(0, 1, (width,), np.int8),
                        "x": spaces.Box(-1.0, 1.0, (2,), np.float32)})


def test_bad_masks_raise_action_mask_error():
    assert issubclass(ActionMaskError, ValueError)
    with pytest.raises(ActionMaskError, match=r"needs \(3,\)"):
        ActorCritic(masked_space(4), spaces.Discrete(3), core="mlp", hidden_size=4, embed_size=4)
    with pytest.raises(ActionMaskError, match="concatenated"):
        ActorCritic(masked_space(3), spaces.MultiDiscrete([2, 3]), core="mlp", hidden_size=4,
                    embed_size=4)
    with pytest.raises(ActionMaskError, match="not Discrete or MultiDiscrete"):
        ActorCritic(masked_space(2), spaces.Box(-1, 1, (2,)), core="mlp", hidden_size=4,
                    embed_size=4)
    policy = ActorCritic(masked_space(3), spaces.Discrete(3), core="gru", hidden_size=4,
                         embed_size=4)
    state, reset = policy.initial_state(2, CPU), torch.ones(2, dtype=torch.bool)
    obs = {"action_mask": torch.ones(2, 4), "x": torch.zeros(2, 2)}
    with pytest.raises(ActionMaskError, match=r"shape \(2, 4\), expected \(2, 3\)"):
        policy.act(obs, state, reset)
    obs["action_mask"] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ActionMaskError, match="allows no action for env 1"):
        policy.act(obs, state, reset)


def test_the_mask_is_not_an_input_and_a_tuple_of_masks_equals_their_concatenation():
    torch.manual_seed(0)
    flat = ActorCritic(masked_space(5), spaces.MultiDiscrete([2, 3]), core="gru", hidden_size=8,
                       embed_size=8)
    per_dim = spaces.Dict({"action_mask": spaces.Tuple((spaces.MultiBinary(2),
                                                        spaces.MultiBinary(3))),
                           "x": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    split = ActorCritic(per_dim, spaces.MultiDiscrete([2, 3]), core="gru", hidden_size=8,
                        embed_size=8)
    split.load_state_dict(flat.state_dict())  # the same weights: the mask adds no input
    assert flat.encoder.keys == ["x"]
    gen = torch.Generator().manual_seed(1)
    T, B = 5, 3
    x = torch.randn(T, B, 2, generator=gen)
    mask = random_mask(T * B, [2, 3], gen).reshape(T, B, 5).float()
    reset = torch.zeros(T, B, dtype=torch.bool)
    actions = torch.stack([torch.randint(2, (T, B)), torch.randint(3, (T, B))], -1)
    a = flat.evaluate({"action_mask": mask, "x": x}, flat.initial_state(B, CPU), reset, actions)
    b = split.evaluate({"action_mask": (mask[..., :2], mask[..., 2:]), "x": x},
                       split.initial_state(B, CPU), reset, actions)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    ones = flat.evaluate({"action_mask": torch.ones_like(mask), "x": x}, flat.initial_state(B, CPU),
                         reset, actions)
    torch.testing.assert_close(ones[2], a[2])       # the value does not see the mask
    assert not torch.allclose(ones[0], a[0])        # the log-probs do


# ---------------------------------------------------------------------------------------------
# learners and evaluation on the masked task
# ---------------------------------------------------------------------------------------------

def test_ppo_stores_the_mask_and_its_first_minibatch_reruns_the_acting_logprobs():
    cfg = TrainConfig(env="masked-recall", env_kwargs={"length": 3, "strict": True}, num_envs=4,
                      num_steps=16, seq_len=8, num_minibatches=1, update_epochs=1, hidden_size=8,
                      embed_size=8, core="urlstm", progress=False)
    torch.manual_seed(0)
    venv = envs.make(cfg.env, cfg.num_envs, seed=0, **cfg.env_kwargs)
    policy = ActorCritic(venv.single_observation_space, venv.single_action_space, core=cfg.core,
                         hidden_size=8, embed_size=8, head_gain=1.0)
    ro = Rollout.zeros(policy, cfg.num_steps, cfg.num_envs, cfg.seq_len, CPU)
    carry = initial_carry(policy, venv, 0, CPU)
    for _ in range(3):  # a masked action would raise (strict)
        carry = collect(policy, venv, ro, carry, EpisodeStats(), Timers())
    assert venv.invalid_actions.sum() == 0 and ro.reset[1:].any()
    mask = ro.obs["action_mask"]                                   # [T, B, n], stored
    assert mask.shape == (16, 4, 4) and (mask.sum(-1) >= 1).all() and (mask == 0).any()
    assert mask.gather(-1, ro.actions.unsqueeze(-1)).all()
    with torch.no_grad():
        states0 = tuple(s[0] for s in ro.states)
        logp = policy.evaluate(ro.obs, states0, ro.reset, ro.actions, ro.prev_action,
                               ro.prev_reward)[0]
        unmasked = policy.evaluate({**ro.obs, "action_mask": torch.ones_like(mask)}, states0,
                                   ro.reset, ro.actions, ro.prev_action, ro.prev_reward)[0]
    torch.testing.assert_close(logp, ro.logprobs, rtol=1e-5, atol=1e-5)
    assert (unmasked - ro.logprobs).abs().max() > 0.1  # without the stored mask they would differ
    adv, ret = gae(ro.rewards, ro.values, ro.terminated, ro.truncated, ro.next_value,
                   ro.final_values, cfg.gamma, cfg.gae_lambda)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    losses = ppo.update(policy, optimizer, ro, adv, ret, cfg)
    assert abs(float(losses["old_approx_kl"])) < 1e-6 and float(losses["clipfrac"]) == 0.0
    assert all(math.isfinite(float(v)) for k, v in losses.items() if k != "explained_variance")


def test_impala_stores_the_mask_and_reruns_the_behaviour_logprobs():
    cfg = TrainConfig(algo="impala", env="masked-recall", env_kwargs={"length": 3, "strict": True},
                      num_envs=3, num_actors=1, unroll_length=7, hidden_size=8, embed_size=8,
                      core="gru", progress=False)
    me = actor.Actor(cfg, seed=5)
    buf = actor.Buffers(me.policy, num_buffers=2, unroll_length=7, envs_per_actor=3, shared=False)
    for slot in (0, 1):
        me.unroll(buf, slot, version=slot)
    assert me.venv.invalid_actions.sum() == 0
    me.close()
    batch = impala.take_batch(buf, [0, 1], CPU)
    assert batch.obs["action_mask"].shape == (8, 6, 4)
    with torch.no_grad():
        logp, entropy, value, kl = impala.rerun(me.policy, batch, with_uniform_kl=True)
    torch.testing.assert_close(logp[:7], batch.logprobs, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(entropy).all() and torch.isfinite(kl).all()
    losses = impala.update(me.policy, torch.optim.Adam(me.policy.parameters()), batch, cfg)
    assert float(losses["importance_ratio"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_learners_run_end_to_end_on_the_masked_task(tmp_path, algo):
    flags = (["--num-steps", "8", "--seq-len", "4", "--num-minibatches", "2"] if algo == "ppo" else
             ["--algo", "impala", "--num-actors", "2", "--unroll-length", "8", "--learner-batch", "2"])
    code, s = train.run_train([*TINY, *flags, "--total-steps", "96", "--logdir", str(tmp_path)])
    assert code == 0 and s["status"] == "finished", s
    assert s["final_eval_episodes"] == 8  # strict: a masked action in training or evaluation raises
    if algo == "impala":
        assert s["actor_errors"] == [] and s["actor_restarts"] == 0


@pytest.mark.parametrize("greedy", [True, False])
def test_evaluation_respects_the_mask(greedy):
    cfg = TrainConfig(env="masked-recall", env_kwargs={"length": 3, "strict": True}, num_envs=2,
                      num_steps=8, seq_len=8, num_minibatches=1, hidden_size=8, embed_size=8,
                      progress=False)
    torch.manual_seed(0)
    probe = envs.make(cfg.env, 1, **cfg.env_kwargs)
    policy = ActorCritic(probe.single_observation_space, probe.single_action_space, core="lstm",
                         hidden_size=8, embed_size=8, head_gain=3.0).eval()
    r = ev.evaluate(policy, cfg, CPU, episodes=40, greedy=greedy)
    assert r["episodes"] == 40 and r["length_mean"] == 4.0  # no episode ended on a masked action
    policy.masked = False  # the same policy blind to the mask takes masked actions
    with pytest.raises(ValueError, match="masked action"):
        ev.evaluate(policy, cfg, CPU, episodes=40, greedy=greedy)


def test_a_loaded_policy_respects_the_mask():
    from policies.deploy import RecurrentPolicy

    torch.manual_seed(0)
    venv = envs.make("masked-recall", 16, seed=3, length=3, strict=True)
    model = ActorCritic(venv.single_observation_space, venv.single_action_space, core="mlp",
                        hidden_size=8, embed_size=8, head_gain=3.0)
    policy = RecurrentPolicy(model)
    obs, _ = venv.reset()
    state, start = policy.initial_state(16), np.ones(16, dtype=bool)
    reward = np.zeros(16, dtype=np.float32)
    for greedy in (True, False) * 10:
        action, state = policy.act(obs, state, start, reward, greedy=greedy)
        obs, reward, term, trunc, _ = venv.step(action)
        start = term | trunc
    assert venv.invalid_actions.sum() == 0
    bad = {k: v.copy() for k, v in obs.items()}
    bad["action_mask"][2] = 0
    with pytest.raises(ActionMaskError, match="env 2"):
        policy.act(bad, state, start, reward)
    x = obs_to_tensor(model.observation_space, obs, "cpu")
    assert model.action_mask(x, (16,)).dtype == torch.bool


def test_an_env_whose_mask_allows_nothing_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    """A mask met while training that allows no action: one line, exit code 2, no traceback."""
    import train
    from envs.masked_recall import MaskedRecallVector

    draw = MaskedRecallVector._draw_mask

    def broken(self, idx):
        draw(self, idx)
        self._allowed[idx] = False

    monkeypatch.setattr(MaskedRecallVector, "_draw_mask", broken)
    assert train.main([*TINY, "--total-steps", "32", "--logdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "allows no action" in err[-1], err
    assert not any("Traceback" in line for line in err)
