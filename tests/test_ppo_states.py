"""PPO's stored sequence start states: the first minibatch of an update re-runs its sequences to
exactly the acting log-probs (every core, episodes straddling sequence and rollout boundaries), and
--refresh-states (fast path against the step-by-step reference; first epoch unchanged, later epochs
start from the states the current weights give)."""

import os

import pytest
import torch

import train
from agents import commands, ppo
from agents.config import TrainConfig
from agents.returns import gae
from agents.rollout import EpisodeStats, Rollout, Timers, collect, initial_carry
from policies.actor_critic import tree_map

CORES = ["urlstm", "urgru", "lstm", "gru", "mlp", "lstm:CR", "gru:O-"]
# T-maze episodes of 5 steps (or more) in rollouts of 12 and sequences of 4: they cross both
CFG = dict(env="urlstm/TMazePassive-v0", env_kwargs={"length": 4}, num_envs=4, num_steps=12,
           seq_len=4, update_epochs=3, hidden_size=16, embed_size=16, learning_rate=1e-2,
           anneal_lr=False, progress=False, device="cpu")


def _setup(core: str, **overrides):
    """A config, its policy and its second rollout (which starts mid-episode, with memory)."""
    cfg = TrainConfig(**{**CFG, "core": core, **overrides})
    torch.manual_seed(0)
    venv = commands.make_env(cfg)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    if cfg.learn_initial_state:  # a learned state far from zeros
        with torch.no_grad():
            for s0 in policy.core.state0:
                s0.normal_()
    ro = Rollout.zeros(policy, cfg.num_steps, cfg.num_envs, cfg.seq_len, torch.device("cpu"))
    carry = initial_carry(policy, venv, cfg.seed, torch.device("cpu"))
    policy.eval()
    for _ in range(2):
        carry = collect(policy, venv, ro, carry, EpisodeStats(), Timers())
    venv.close()
    starts = ro.reset.reshape(cfg.num_steps // cfg.seq_len, cfg.seq_len, cfg.num_envs)
    assert starts[:, 1:].any(), "an episode should start inside a sequence"
    assert not ro.reset[0].all(), "an episode should cross the rollout boundary"
    return cfg, policy, ro


def _update(policy, ro, cfg, refresh=None):
    advantages, returns = gae(ro.rewards, ro.values, ro.terminated, ro.truncated, ro.next_value,
                              ro.final_values, cfg.gamma, cfg.gae_lambda)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    policy.train()
    return ppo.update(policy, optimizer, ro, advantages, returns, cfg, refresh)


def _record_evaluate(policy, monkeypatch, also=None):
    """Record each policy.evaluate call's start states and log-probs (and ``also(policy)``)."""
    calls = []
    evaluate = policy.evaluate

    def recording(obs, state0, *args, **kwargs):
        out = evaluate(obs, state0, *args, **kwargs)
        calls.append({"state0": tuple(s.clone() for s in state0), "logprob": out[0].detach(),
                      "also": also(policy) if also else None})
        return out

    monkeypatch.setattr(policy, "evaluate", recording)
    return calls


LEARNED = [("urlstm", True), ("gru", True), ("lstm", True), ("stack:3", True)]


@pytest.mark.parametrize("core,learned", [(c, False) for c in CORES] + LEARNED)
def test_first_minibatch_reruns_to_the_acting_logprobs(core, learned, monkeypatch):
    cfg, policy, ro = _setup(core, num_minibatches=1, learn_initial_state=learned)
    calls = _record_evaluate(policy, monkeypatch)
    losses = _update(policy, ro, cfg)
    old = ppo._to_sequences(ro.logprobs, cfg.seq_len)
    ratio = (calls[0]["logprob"] - old).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    assert abs(float(losses["first_old_approx_kl"])) < 1e-5
    # the check can fail: after the first gradient step the log-probs move
    assert (calls[1]["logprob"] - old).abs().max() > 1e-3

    cfg, policy, ro = _setup(core, num_minibatches=3,  # the first of 3 random minibatches
                             learn_initial_state=learned)
    losses = _update(policy, ro, cfg)
    assert abs(float(losses["first_old_approx_kl"])) < 1e-5
    assert abs(float(losses["old_approx_kl"])) > 1e-5


@pytest.mark.parametrize("core,learned", [(c, False) for c in CORES] + LEARNED)
def test_sequence_start_states_fast_path_equals_reference(core, learned):
    cfg, policy, ro = _setup(core, learn_initial_state=learned)
    first = tuple(s[0] for s in ro.states)
    args = (ro.obs, first, ro.reset, ro.prev_action, ro.prev_reward, cfg.seq_len)
    fast = policy.sequence_start_states(*args)
    ref = policy.sequence_start_states(*args, reference=True)
    assert len(fast) == len(ref) == len(ro.states)  # () for mlp
    for f, r, stored in zip(fast, ref, ro.states):
        # with the acting weights both give back the states stored while acting
        torch.testing.assert_close(f, stored, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r, stored, rtol=1e-5, atol=1e-5)
    _update(policy, ro, cfg)  # moved weights: other states, still equal
    fast = ppo.refreshed_states(policy, ro)
    ref = policy.sequence_start_states(*args, reference=True)
    for f, r, stored in zip(fast, ref, ro.states):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
        assert torch.equal(f[0], stored[0])
        assert (f[1:] - stored[1:]).abs().max() > 1e-4


@pytest.mark.parametrize("core", ["urlstm", "lstm", "gru:O-"])
def test_refresh_leaves_the_first_epoch_and_refreshes_the_later_ones(core, monkeypatch):
    cfg, policy, ro = _setup(core, num_minibatches=1)
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    first = tuple(s[0] for s in ro.states)

    def current_states(policy):  # the reference with the weights of the moment, as [L, K*B, H]
        training = policy.training
        policy.eval()
        states = policy.sequence_start_states(ro.obs, first, ro.reset, ro.prev_action,
                                              ro.prev_reward, cfg.seq_len, reference=True)
        policy.train(training)
        return ppo._sequence_states(states)

    runs = {}
    for refresh in (False, True):
        policy.load_state_dict(weights)
        torch.manual_seed(1)
        calls = _record_evaluate(policy, monkeypatch, also=current_states)
        _update(policy, ro, cfg, (lambda: ppo.refreshed_states(policy, ro)) if refresh else None)
        monkeypatch.undo()
        runs[refresh] = calls
    stored = ppo._sequence_states(ro.states)
    off, on = runs[False], runs[True]
    assert len(off) == len(on) == cfg.update_epochs
    # epoch 0: the stored states, the same pass with and without refresh
    for a, b, s in zip(off[0]["state0"], on[0]["state0"], stored):
        assert torch.equal(a, s) and torch.equal(b, s)
    assert torch.equal(off[0]["logprob"], on[0]["logprob"])
    B = cfg.num_envs
    for epoch in range(1, cfg.update_epochs):
        for a, b, s, now in zip(off[epoch]["state0"], on[epoch]["state0"], stored,
                                on[epoch]["also"]):
            assert torch.equal(a, s)  # without refresh: always the stored states
            torch.testing.assert_close(b, now, rtol=1e-5, atol=1e-5)  # with: the current ones
            assert torch.equal(b[:, :B], s[:, :B])  # the rollout's first state is kept
            assert (b[:, B:] - s[:, B:]).abs().max() > 1e-4


def test_refresh_states_run_logs_its_time_and_the_first_kl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = ["--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8", "--hidden-size",
             "16", "--embed-size", "16", "--eval-episodes", "0", "--no-progress", "--device",
             "cpu", "--total-steps", "64", "--refresh-states", "--logdir", str(tmp_path)]
    code, s = train.run_train([*flags, "--seq-len", "4", "--run-name", "two"])
    assert code == 0 and s["status"] == "finished"
    assert s["perf_s"]["refresh_states"] > 0
    ea = EventAccumulator(s["run_dir"])
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"perf/refresh_states_s", "losses/first_old_approx_kl"} <= tags
    assert all(abs(e.value) < 1e-5 for e in ea.Scalars("losses/first_old_approx_kl"))
    # one sequence per rollout: nothing to refresh, no time spent on it
    code, s = train.run_train([*flags, "--seq-len", "8", "--run-name", "one"])
    assert code == 0 and "refresh_states" not in s["perf_s"]
    assert os.path.isfile(os.path.join(s["run_dir"], "summary.json"))


def test_refresh_does_not_touch_the_rollout():
    cfg, policy, ro = _setup("urlstm")
    before = tree_map(lambda x: x.clone(), (ro.obs, ro.states, ro.reset))
    _update(policy, ro, cfg, lambda: ppo.refreshed_states(policy, ro))
    after = (ro.obs, ro.states, ro.reset)
    tree_map(lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0), before, after)
    assert policy.training  # refreshed in eval mode, then back to training


def test_dict_observations_with_truncation(monkeypatch):
    """MiniGrid (a Dict observation with an image) cut by a time limit of 5 steps."""
    cfg, policy, ro = _setup("urlstm", env="MiniGrid-MemoryS7-v0", num_minibatches=1,
                             env_kwargs={"max_steps": 5, "vectorization": "sync"})
    assert isinstance(ro.obs, dict) and (ro.truncated & ~ro.terminated).any()
    first = tuple(s[0] for s in ro.states)
    args = (ro.obs, first, ro.reset, ro.prev_action, ro.prev_reward, cfg.seq_len)
    for f, r, stored in zip(policy.sequence_start_states(*args),
                            policy.sequence_start_states(*args, reference=True), ro.states):
        torch.testing.assert_close(f, stored, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r, stored, rtol=1e-5, atol=1e-5)
    calls = _record_evaluate(policy, monkeypatch)
    losses = _update(policy, ro, cfg)
    old = ppo._to_sequences(ro.logprobs, cfg.seq_len)
    torch.testing.assert_close(calls[0]["logprob"], old, rtol=0, atol=1e-5)
    assert abs(float(losses["first_old_approx_kl"])) < 1e-5
