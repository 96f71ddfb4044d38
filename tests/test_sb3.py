"""policies/sb3.py: registry cores inside sb3-contrib RecurrentPPO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import set_random_seed

import envs  # noqa: F401  (registers urlstm/TMazePassive-v0)
from policies.sb3 import URLSTMCnnPolicy, URLSTMMultiInputPolicy, URLSTMPolicy

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("lstm", "gru", "urlstm", "urgru", "lstm:CR", "gru:U-", "mlp")
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
NET = dict(hidden_size=8, net_arch=dict(pi=[8], vf=[8]))


class CueEnv(gym.Env):
    """Memory bit: a cue (+1 / -1) is shown at t = 0 only; at t = length the action must name it.

    Observation (kind "vec"): [cue at t = 0 else 0, 1 at t = length else 0]; "img" paints the same
    two numbers into a 36x36x1 uint8 image (NatureCNN's minimum); "dict" splits them into two keys.
    Reward 1 for the right answer at the last step, 0 otherwise; a memoryless policy gets 0.5.
    """

    def __init__(self, length: int = 3, kind: str = "vec"):
        self.length, self.kind = length, kind
        self.action_space = spaces.Discrete(2)
        if kind == "vec":
            self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        elif kind == "img":
            self.observation_space = spaces.Box(0, 255, (36, 36, 1), np.uint8)
        else:
            box = spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.observation_space = spaces.Dict({"cue": box, "query": box})

    def _obs(self):
        v = np.array([self.cue * (self.t == 0), float(self.t == self.length)], np.float32)
        if self.kind == "vec":
            return v
        if self.kind == "img":
            img = np.zeros((36, 36, 1), np.uint8)
            img[:18] = int(127 + 127 * v[0])
            img[18:] = int(255 * v[1])
            return img
        return {"cue": v[:1], "query": v[1:]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = float(2 * self.np_random.integers(2) - 1), 0
        return self._obs(), {}

    def step(self, action):
        done = self.t == self.length
        reward = float(done and (2 * int(action) - 1) == self.cue)
        self.t += 1
        return self._obs(), reward, done, False, {"is_success": reward > 0} if done else {}


@pytest.mark.parametrize("core", FAMILIES)
@pytest.mark.parametrize(
    "policy, kind",
    [(URLSTMPolicy, "vec"), (URLSTMCnnPolicy, "img"), (URLSTMMultiInputPolicy, "dict")],
)
def test_construct_and_predict(policy, kind, core):
    model = RecurrentPPO(policy, CueEnv(kind=kind), policy_kwargs=dict(core=core, **NET), **SMALL)
    assert model.policy.lstm_actor.hidden_size == 8
    obs, _ = CueEnv(kind=kind).reset(seed=0)
    action, state = model.predict(obs, episode_start=np.array([True]))
    assert model.action_space.contains(int(action))
    assert len(state) == 2 and all(s.shape == (1, 1, 8) for s in state)
    if core in ("gru", "urgru", "gru:U-"):
        assert not state[1].any()  # the dummy cell state stays zero
    if core == "mlp":
        assert not state[0].any() and not state[1].any()


@pytest.mark.parametrize("core", ["urlstm", "gru", "mlp"])
def test_few_hundred_training_steps_and_evaluate_policy(core):
    model = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(core=core, **NET), **SMALL)
    model.learn(256)
    assert model.num_timesteps == 256
    assert np.isfinite(model.logger.name_to_value["train/loss"])
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=4)
    assert 0.0 <= mean <= 1.0


@pytest.mark.parametrize(
    "policy, kind", [(URLSTMCnnPolicy, "img"), (URLSTMMultiInputPolicy, "dict")]
)
def test_training_steps_other_observation_types(policy, kind):
    model = RecurrentPPO(
        policy, CueEnv(kind=kind), policy_kwargs=dict(core="urlstm", **NET), **SMALL
    )
    model.learn(64)
    assert np.isfinite(model.logger.name_to_value["train/loss"])


@pytest.mark.parametrize("use_sde", [False, True])
def test_continuous_actions(use_sde):
    policy_kwargs = dict(core="gru:CR", **NET)
    model = RecurrentPPO(
        URLSTMPolicy, "Pendulum-v1", use_sde=use_sde, policy_kwargs=policy_kwargs, **SMALL
    )
    model.learn(32)
    assert np.isfinite(model.logger.name_to_value["train/loss"])


@pytest.mark.parametrize(
    "options",
    [
        dict(n_lstm_layers=2),
        dict(shared_lstm=True, enable_critic_lstm=False),
        dict(enable_critic_lstm=False),
        dict(share_features_extractor=False),
    ],
)
def test_recurrentppo_options(options):
    model = RecurrentPPO(
        URLSTMPolicy, CueEnv(), policy_kwargs=dict(core="urgru", **NET, **options), **SMALL
    )
    model.learn(32)
    has_critic_core = options.get("enable_critic_lstm", True)
    assert (model.policy.lstm_critic is not None) == has_critic_core
    assert model.policy.lstm_actor.num_layers == options.get("n_lstm_layers", 1)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown core"):
        RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(core="nope"), **SMALL)
    with pytest.raises(ValueError, match="disagree"):
        RecurrentPPO(
            URLSTMPolicy, CueEnv(), policy_kwargs=dict(hidden_size=8, lstm_hidden_size=16), **SMALL
        )
    with pytest.raises(ValueError, match="enable_critic_lstm=False"):
        RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(shared_lstm=True), **SMALL)


def _rollout(model, env, n_steps, seed):
    """Deterministic actions with the state carried: [n_steps] actions and the final state."""
    obs, _ = env.reset(seed=seed)
    state, start, actions = None, np.array([True]), []
    for _ in range(n_steps):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        obs, _, term, trunc, _ = env.step(action)
        start = np.array([term or trunc])
        if term or trunc:
            obs, _ = env.reset()
        actions.append(int(action))
    return actions, state


@pytest.mark.parametrize("core", ["urlstm", "gru", "mlp"])
def test_save_load_round_trip(tmp_path, core):
    model = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(core=core, **NET), **SMALL)
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.core_spec == core
    before, after = model.policy.state_dict(), loaded.policy.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    actions_a, state_a = _rollout(model, CueEnv(), 12, seed=1)
    actions_b, state_b = _rollout(loaded, CueEnv(), 12, seed=1)
    assert actions_a == actions_b
    np.testing.assert_array_equal(state_a[0], state_b[0])
    np.testing.assert_array_equal(state_a[1], state_b[1])
    # the policy on its own round-trips too (constructor parameters include the core)
    model.policy.save(tmp_path / "policy.pt")
    policy = type(model.policy).load(tmp_path / "policy.pt", device="cpu")
    assert policy.core_spec == core and policy.lstm_output_dim == 8


@pytest.mark.parametrize("core", ["urlstm", "gru"])
def test_predict_episode_start_resets_state(core):
    model = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(core=core, **NET), **SMALL)
    obs = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    _, state = model.predict(obs[0], deterministic=True)
    _, state = model.predict(
        obs[1], state=state, episode_start=np.array([False]), deterministic=True
    )
    assert np.abs(state[0]).sum() > 0
    _, fresh = model.predict(obs[2], state=None, deterministic=True)
    _, reset = model.predict(
        obs[2], state=state, episode_start=np.array([True]), deterministic=True
    )
    _, carried = model.predict(
        obs[2], state=state, episode_start=np.array([False]), deterministic=True
    )
    np.testing.assert_array_equal(reset[0], fresh[0])
    np.testing.assert_array_equal(reset[1], fresh[1])
    assert not np.allclose(carried[0], fresh[0])
    # per env in a batch of two: only the env that starts an episode is reset
    both = tuple(np.concatenate([s, s], axis=1) for s in state)
    _, mixed = model.predict(
        obs[[2, 2]], state=both, episode_start=np.array([True, False]), deterministic=True
    )
    np.testing.assert_allclose(mixed[0][:, :1], fresh[0], atol=1e-6)
    np.testing.assert_allclose(mixed[0][:, 1:], carried[0], atol=1e-6)


def _stock_and_adapter(seed: int, **algo):
    """Stock MlpLstmPolicy and the adapter with core="lstm" holding the same weights."""
    kw = dict(n_steps=64, batch_size=48, n_epochs=2, seed=seed, device="cpu", **algo)
    stock = RecurrentPPO(
        "MlpLstmPolicy", "CartPole-v1", policy_kwargs=dict(lstm_hidden_size=16), **kw
    )
    ours = RecurrentPPO(
        URLSTMPolicy, "CartPole-v1", policy_kwargs=dict(core="lstm", hidden_size=16), **kw
    )
    return stock, ours


def test_lstm_same_seed_same_initial_weights():
    stock, ours = _stock_and_adapter(seed=3)
    a, b = stock.policy.state_dict(), ours.policy.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lstm_matches_stock_on_training_batches():
    """Same rollout buffer, same weights: values, log-probs, entropy, loss and gradients agree."""
    stock, ours = _stock_and_adapter(seed=0)
    ours.policy.load_state_dict(stock.policy.state_dict())
    stock.train = lambda: None  # only collect a rollout (episodes of ~20 steps: starts inside)
    stock.learn(64)
    buffer = stock.rollout_buffer
    assert buffer.episode_starts.sum() >= 2
    set_random_seed(0)
    batches = list(buffer.get(48))  # padded sequences, split mid-episode by the random shift
    assert any(b.mask.min() == 0 for b in batches)  # padding present
    for b in batches:
        actions = b.actions.long().flatten()
        outs = []
        for policy in (stock.policy, ours.policy):
            policy.zero_grad()
            values, log_prob, entropy = policy.evaluate_actions(
                b.observations, actions, b.lstm_states, b.episode_starts
            )
            mask = b.mask > 1e-8
            ratio = torch.exp(log_prob - b.old_log_prob)
            loss = (
                -(b.advantages * ratio)[mask].mean()
                + ((b.returns - values.flatten()) ** 2)[mask].mean()
            )
            loss = loss - 0.01 * entropy[mask].mean()
            loss.backward()
            grads = [p.grad.clone() for p in policy.parameters()]
            outs.append((values[mask], log_prob[mask], entropy[mask], loss, grads))
        (va, la, ea, lossa, ga), (vb, lb, eb, lossb, gb) = outs
        torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eb, ea, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lossb, lossa, rtol=1e-5, atol=1e-5)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
        # the rollout path: one step per env with the stored states
        n = b.lstm_states.pi[0].shape[1]
        state = RNNStates(b.lstm_states.pi, b.lstm_states.vf)
        first = b.observations.reshape(n, -1, 4)[:, 0]
        starts = b.episode_starts.reshape(n, -1)[:, 0]
        with torch.no_grad():
            set_random_seed(1)
            _, v_a, _, s_a = stock.policy(first, state, starts)
            set_random_seed(1)
            _, v_b, _, s_b = ours.policy(first, state, starts)
        torch.testing.assert_close(v_b, v_a, rtol=1e-5, atol=1e-6)
        for x, y in zip(s_a.pi + s_a.vf, s_b.pi + s_b.vf):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_lstm_first_updates_match_stock():
    """Same seed, same budget: logged losses and trained weights agree within float tolerance."""
    stock, _ = _stock_and_adapter(seed=5)
    stock.learn(128)
    _, ours = _stock_and_adapter(seed=5)
    ours.learn(128)
    for key in (
        "train/loss",
        "train/value_loss",
        "train/policy_gradient_loss",
        "train/entropy_loss",
    ):
        a, b = stock.logger.name_to_value[key], ours.logger.name_to_value[key]
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), key
    a, b = stock.policy.state_dict(), ours.policy.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_example_runs_and_rejects_bad_arguments(capsys):
    from benchmarks import sb3_adapter as example

    result = example.train_and_evaluate(
        "urgru",
        "urlstm/TMazePassive-v0",
        length=3,
        total_timesteps=256,
        n_envs=2,
        hidden_size=8,
        eval_episodes=3,
        n_steps=32,
        batch_size=32,
    )
    assert result["success_rate"] is not None and 0.0 <= result["success_rate"] <= 1.0
    assert example.main(["--core", "nope"]) == 2
    assert example.main(["--env", "NoSuchEnv-v0"]) == 2
    assert "unknown core" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("core, passes", [("urlstm", True), ("mlp", False)])
def test_urlstm_learns_a_short_memory_chain(core, passes):
    """The adapter's CLI, 150k steps on a length-10 memory chain: urlstm solves it, mlp cannot."""
    cmd = [
        sys.executable,
        "benchmarks/sb3_adapter.py",
        "--core",
        core,
        "--env",
        "urlstm/MemoryChain-v0",
        "--length",
        "10",
        "--seed",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if passes:
        assert result["success_rate"] >= 0.9, result
    else:
        assert result["success_rate"] <= 0.6, result


# ---------------------------------------------------------------------------------------------
# sb3-contrib's own RecurrentPPO tests (tests/test_lstm.py of stable-baselines3-contrib 2.x),
# with this adapter's policies in place of MlpLstmPolicy / CnnLstmPolicy / MultiInputLstmPolicy
# ---------------------------------------------------------------------------------------------

DROPOUT_CASES = [
    dict(enable_critic_lstm=True, lstm_hidden_size=4, lstm_kwargs=dict(dropout=0.5), n_lstm_layers=2),
    dict(enable_critic_lstm=False, lstm_hidden_size=4, lstm_kwargs=dict(dropout=0.5), n_lstm_layers=2),
]


class ToDictWrapper(gym.Wrapper):
    """sb3-contrib's wrapper for testing MultiInputLstmPolicy on Dict observations."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = spaces.Dict({"obs": self.env.observation_space})

    def reset(self, **kwargs):
        return {"obs": self.env.reset(**kwargs)[0]}, {}

    def step(self, action):
        obs, reward, done, truncated, infos = self.env.step(action)
        return {"obs": obs}, reward, done, truncated, infos


@pytest.mark.parametrize("policy_kwargs", [
    {},
    {"share_features_extractor": False},
    dict(shared_lstm=True, enable_critic_lstm=False),
    *DROPOUT_CASES,
    dict(enable_critic_lstm=False, lstm_hidden_size=4, share_features_extractor=False),
])
def test_sb3_contrib_cnn(policy_kwargs):
    from stable_baselines3.common.envs import FakeImageEnv

    model = RecurrentPPO(URLSTMCnnPolicy, FakeImageEnv(screen_height=40, screen_width=40, n_channels=3),
                         n_steps=16, seed=0,
                         policy_kwargs=dict(**policy_kwargs, features_extractor_kwargs=dict(features_dim=32)),
                         n_epochs=2)
    model.learn(total_timesteps=32)


@pytest.mark.parametrize("policy_kwargs", [{}, dict(shared_lstm=True, enable_critic_lstm=False),
                                           *DROPOUT_CASES])
def test_sb3_contrib_policy_kwargs(policy_kwargs):
    model = RecurrentPPO(URLSTMPolicy, "CartPole-v1", n_steps=16, seed=0, policy_kwargs=policy_kwargs)
    model.learn(total_timesteps=32)


@pytest.mark.parametrize("policy_kwargs", [{}, dict(shared_lstm=True, enable_critic_lstm=False),
                                           *DROPOUT_CASES])
def test_sb3_contrib_dict_obs(policy_kwargs):
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=1, wrapper_class=ToDictWrapper)
    model = RecurrentPPO(URLSTMMultiInputPolicy, env, n_steps=32, policy_kwargs=policy_kwargs).learn(64)
    evaluate_policy(model, env, warn=False)


def test_sb3_contrib_check():
    """The invalid shared/critic combinations raise AssertionError, as sb3-contrib's policy does."""
    for policy_kwargs in (dict(shared_lstm=True, enable_critic_lstm=True),
                          dict(shared_lstm=True, enable_critic_lstm=False, share_features_extractor=False)):
        with pytest.raises(AssertionError):
            RecurrentPPO(URLSTMPolicy, "CartPole-v1", n_steps=16, seed=0, policy_kwargs=policy_kwargs)


@pytest.mark.parametrize("core", ["urlstm", "lstm", "urgru", "mlp"])
def test_lstm_kwargs_dropout_reaches_every_core_and_acts_only_in_training(core):
    model = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(
        core=core, n_lstm_layers=2, lstm_kwargs=dict(dropout=0.5), **NET), **SMALL)
    p = model.policy
    assert p.lstm_actor.dropout == 0.5 and p.lstm_critic.dropout == 0.5
    obs = torch.ones(4, 2)
    state = RNNStates(*[tuple(torch.zeros(2, 4, 8) for _ in range(2))] * 2)
    starts = torch.zeros(4)
    p.set_training_mode(False)
    v1, v2 = p.predict_values(obs, state.vf, starts), p.predict_values(obs, state.vf, starts)
    torch.testing.assert_close(v1, v2)  # eval mode: no dropout, deterministic
    p.set_training_mode(True)
    torch.manual_seed(0)
    drawn = [p.predict_values(obs, state.vf, starts) for _ in range(4)]
    assert any(not torch.equal(drawn[0], d) for d in drawn[1:])  # training mode draws masks
    model.learn(32)
    assert np.isfinite(model.logger.name_to_value["train/loss"])


def test_lstm_kwargs_torch_defaults_accepted_others_rejected():
    ok = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(
        lstm_kwargs=dict(bias=True, batch_first=False, bidirectional=False, proj_size=0), **NET), **SMALL)
    assert ok.policy.lstm_actor.dropout == 0.0
    with pytest.raises(ValueError, match="lstm_kwargs bidirectional=True is not supported"):
        RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(lstm_kwargs=dict(bidirectional=True), **NET),
                     **SMALL)
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=dict(
            n_lstm_layers=2, lstm_kwargs=dict(dropout=2.0), **NET), **SMALL)


def test_action_mask_applies_when_acting_and_in_evaluate_actions():
    """RecurrentPPO on the masked task (strict: a masked action raises) collects and trains; the
    training-time log-probs equal the acting ones; rows that allow nothing (padding) stay finite."""
    env = gym.make("urlstm/MaskedRecall-v0", length=3, strict=True)
    model = RecurrentPPO(URLSTMMultiInputPolicy, env, n_steps=32, batch_size=32, n_epochs=2,
                         seed=0, device="cpu", policy_kwargs=dict(core="gru", **NET)).learn(96)
    assert env.unwrapped.invalid_actions == 0
    evaluate_policy(model, env, n_eval_episodes=10, warn=False)
    p = model.policy
    gen = np.random.default_rng(0)
    n = 64
    mask = (gen.random((n, 4)) < 0.5).astype(np.int8)
    mask[np.arange(n), gen.integers(4, size=n)] = 1
    mask[:8] = [0, 1, 0, 0]
    obs = {"action_mask": torch.as_tensor(mask),
           "observation": torch.as_tensor(gen.random((n, 5)), dtype=torch.float32)}
    state = RNNStates(*[tuple(torch.zeros(1, n, 8) for _ in range(2))] * 2)
    starts = torch.ones(n)
    with torch.no_grad():
        actions, _, logp, _ = p.forward(obs, state, starts)
        greedy, _, _, _ = p.forward(obs, state, starts, deterministic=True)
        _, logp_again, entropy = p.evaluate_actions(obs, actions, state, starts)
        padded = {k: torch.zeros_like(v) for k, v in obs.items()}
        _, logp_pad, entropy_pad = p.evaluate_actions(padded, actions, state, starts)
    for a in (actions, greedy):
        assert mask[np.arange(n), a.numpy()].all()
    assert (actions[:8] == 1).all() and torch.allclose(logp[:8], torch.zeros(8), atol=1e-6)
    torch.testing.assert_close(logp_again, logp)
    assert torch.isfinite(entropy).all() and (entropy[:8].abs() < 1e-6).all()
    assert torch.isfinite(logp_pad).all() and torch.isfinite(entropy_pad).all()


def test_a_learned_initial_state_trains_and_starts_every_episode():
    kwargs = dict(core="urlstm", core_kwargs={"learn_initial_state": True}, **NET)
    model = RecurrentPPO(URLSTMPolicy, CueEnv(), policy_kwargs=kwargs, **SMALL)
    model.learn(256)
    learned = list(model.policy.lstm_actor.state0)
    assert any(bool(s.abs().max() > 1e-6) for s in learned), "the resets inside sequences train it"
    obs, _ = CueEnv().reset(seed=0)
    noise = tuple(np.random.randn(1, 1, 8).astype(np.float32) for _ in range(2))
    start = np.array([True])
    _, from_noise = model.predict(obs, state=noise, episode_start=start)
    _, from_zeros = model.predict(obs, state=tuple(np.zeros_like(s) for s in noise), episode_start=start)
    for a, b in zip(from_noise, from_zeros):
        np.testing.assert_allclose(a, b, rtol=1e-6)
