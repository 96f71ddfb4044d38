"""Export: the ONNX graph in onnxruntime and the TorchScript module in torch, run step by step over
multi-episode rollouts with resets, compute the live policy's logits (or action mean / log-std),
value and state; bad formats and outputs give one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

import envs
from policies.actor_critic import ActorCritic, obs_to_tensor
from policies.export import ExportError, OneStep, export, export_checkpoint

CORES = ["urlstm", "urgru", "lstm", "gru", "lstm:CR", "mlp", "stack:3"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def live_step(model: ActorCritic, obs, state, start, prev_action, prev_reward):
    """The policy as it acts (the cores' fast path, resets inside ``core.step``)."""
    x = model._inputs(obs, start, prev_action, prev_reward, (start.shape[0],))
    y, state = model.core.step(x, state, start)
    out = model.head.linear(y)
    head = (out, model.head.log_std.expand_as(out)) if model.head.kind == "gaussian" else (out,)
    return (*head, model.value_head(y).squeeze(-1), *state)


def first_step(model: ActorCritic, venv):
    """The first observation of ``venv`` (reset) and the policy's inputs at an episode start."""
    n = venv.num_envs
    return (venv.reset()[0], model.initial_state(n, "cpu"), torch.ones(n, dtype=torch.bool),
            torch.zeros(n, dtype=torch.long), torch.zeros(n))


class Runners:
    """The exported ONNX graph and TorchScript module of one model, called with tensors."""

    def __init__(self, model: ActorCritic, tmp_path):
        step = OneStep(model)
        self.names = step.input_names()
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.onnx = ort.InferenceSession(export(model, tmp_path / "p.onnx"), options)
        with warnings.catch_warnings():  # torch.jit.load's deprecation note
            warnings.simplefilter("ignore", DeprecationWarning)
            self.script = torch.jit.load(export(model, tmp_path / "p.pt", "torchscript"))

    def __call__(self, *inputs: torch.Tensor):
        feed = {name: x.numpy() for name, x in zip(self.names, inputs)}
        return [torch.from_numpy(a) for a in self.onnx.run(None, feed)], list(self.script(*inputs))


def assert_same(outputs, expected, where: str) -> float:
    worst = 0.0
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{where}: {m}")
        worst = max(worst, float((got - want).abs().max()) if want.numel() else 0.0)
    return worst


@pytest.mark.parametrize("core,learned", [(c, False) for c in CORES]
                         + [("urlstm", True), ("gru", True), ("stack:3", True)])
def test_exported_step_matches_the_policy_over_tmaze_episodes(core, learned, tmp_path):
    torch.manual_seed(0)
    venv = envs.make("urlstm/TMazePassive-v0", num_envs=4, seed=0, length=5)
    model = ActorCritic(venv.single_observation_space, venv.single_action_space, core=core,
                        hidden_size=16, embed_size=16, num_layers=2, head_gain=1.0,
                        learn_initial_state=learned).eval()
    if learned:  # every reset must give the learned state, not zeros
        with torch.no_grad():
            for s0 in model.core.state0:
                s0.normal_()
    run = Runners(model, tmp_path)
    obs, state, start, prev_action, prev_reward = first_step(model, venv)
    starts = 0
    with torch.no_grad():
        for t in range(40):  # episodes of 6 steps or fewer: every env starts several
            x = obs_to_tensor(venv.single_observation_space, obs, "cpu")
            inputs = (x, *state, start, prev_action, prev_reward)
            want = live_step(model, x, state, start, prev_action, prev_reward)
            onnx_out, script_out = run(*inputs)
            assert_same(onnx_out, want, f"onnx step {t}")
            assert_same(script_out, want, f"torchscript step {t}")
            logits = want[0]
            action = torch.distributions.Categorical(logits=logits).sample()
            obs, reward, term, trunc, _ = venv.step(action.numpy())
            state = want[2:]
            start = torch.as_tensor(term | trunc)
            prev_action, prev_reward = action, torch.as_tensor(reward, dtype=torch.float32)
            starts += int(start.sum())
    venv.close()
    assert starts >= 8


@pytest.mark.parametrize("core", ["urlstm", "gru"])
def test_dict_observation_and_box_actions_with_random_resets(core, tmp_path):
    obs_space = spaces.Dict({"image": spaces.Box(0, 255, (5, 5, 3), np.uint8),
                             "pos": spaces.Discrete(4, start=1),
                             "vec": spaces.Box(-1.0, 1.0, (3,), np.float32)})
    torch.manual_seed(1)
    model = ActorCritic(obs_space, spaces.Box(-2.0, 2.0, (2,), np.float32), core=core,
                        hidden_size=8, embed_size=8).eval()
    with torch.no_grad():
        model.head.log_std.copy_(torch.tensor([-0.5, 0.3]))
    run = Runners(model, tmp_path)
    assert run.names[:3] == ["obs.image", "obs.pos", "obs.vec"]
    gen = torch.Generator().manual_seed(2)
    batch = batch_space(obs_space, 3)
    batch.seed(3)
    state = model.initial_state(3, "cpu")
    prev_action, prev_reward = torch.zeros(3, 2), torch.zeros(3)
    with torch.no_grad():
        for t in range(12):
            x = obs_to_tensor(obs_space, batch.sample(), "cpu")
            start = torch.rand(3, generator=gen) < 0.3
            want = live_step(model, x, state, start, prev_action, prev_reward)
            onnx_out, script_out = run(x["image"], x["pos"], x["vec"], *state, start, prev_action,
                                       prev_reward)
            assert_same(onnx_out, want, f"onnx step {t}")
            assert_same(script_out, want, f"torchscript step {t}")
            state = want[3:]
            prev_action = want[0] + torch.randn(3, 2, generator=gen)
            prev_reward = torch.randn(3, generator=gen)


def test_a_policy_without_previous_action_and_reward_has_no_such_inputs(tmp_path):
    torch.manual_seed(0)
    model = ActorCritic(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.MultiDiscrete([3, 2]),
                        core="lstm", hidden_size=8, embed_size=8, prev_action_reward=False).eval()
    run = Runners(model, tmp_path)
    assert run.names == ["obs", "state_0", "state_1", "episode_start"]
    assert [i.name for i in run.onnx.get_inputs()] == run.names
    state = model.initial_state(4, "cpu")
    with torch.no_grad():
        for t in range(6):
            obs, start = torch.randn(4, 3), torch.rand(4) < 0.3
            want = live_step(model, obs, state, start, None, None)
            onnx_out, script_out = run(obs, *state, start)
            assert_same(onnx_out, want, f"onnx step {t}")
            assert_same(script_out, want, f"torchscript step {t}")
            state = want[2:]


def test_the_action_mask_is_an_input_that_masks_the_logits(tmp_path):
    torch.manual_seed(0)
    venv = envs.make("masked-recall", num_envs=4, seed=0, length=3, strict=True)
    model = ActorCritic(venv.single_observation_space, venv.single_action_space, core="gru",
                        hidden_size=8, embed_size=8, head_gain=3.0).eval()
    run = Runners(model, tmp_path)
    assert run.names[:2] == ["obs.action_mask", "obs.observation"]
    obs, state, start, prev_action, prev_reward = first_step(model, venv)
    masked = 0
    with torch.no_grad():
        for t in range(30):  # strict: an argmax on a masked action raises
            x = obs_to_tensor(venv.single_observation_space, obs, "cpu")
            want = live_step(model, x, state, start, prev_action, prev_reward)
            allowed = x["action_mask"] != 0
            want = (want[0].masked_fill(~allowed, torch.finfo(torch.float32).min), *want[1:])
            onnx_out, script_out = run(x["action_mask"], x["observation"], *state, start,
                                       prev_action, prev_reward)
            assert_same(onnx_out, want, f"onnx step {t}")
            assert_same(script_out, want, f"torchscript step {t}")
            masked += int((~allowed).sum())
            action = onnx_out[0].argmax(-1)
            obs, reward, term, trunc, _ = venv.step(action.numpy())
            state, start = want[2:], torch.as_tensor(term | trunc)
            prev_action, prev_reward = action, torch.as_tensor(reward, dtype=torch.float32)
    assert masked > 30 and venv.invalid_actions.sum() == 0


def test_the_reset_clears_state_and_previous_action_and_reward(tmp_path):
    torch.manual_seed(0)
    model = ActorCritic(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(3), core="urlstm",
                        hidden_size=8, embed_size=8).eval()
    run = Runners(model, tmp_path)
    obs, start = torch.randn(2, 3), torch.ones(2, dtype=torch.bool)
    zeros = (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), start, torch.zeros(2, dtype=torch.long),
             torch.zeros(2))
    noisy = (torch.randn(1, 2, 8), torch.randn(1, 2, 8), start, torch.tensor([1, 2]),
             torch.tensor([0.5, -1.0]))
    for fresh, carried in zip(run(obs, *zeros), run(obs, *noisy)):  # onnx, then torchscript
        for a, b in zip(fresh, carried):
            torch.testing.assert_close(a, b)
    carried_on = run(obs, *noisy[:2], ~start, *noisy[3:])[0]
    assert not torch.allclose(carried_on[0], run(obs, *zeros)[0][0])


def test_bad_format_and_unwritable_output_are_one_line_errors(tmp_path):
    model = ActorCritic(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(2), core="gru",
                        hidden_size=4, embed_size=4)
    with pytest.raises(ExportError, match="unknown export format 'tflite'") as err:
        export(model, tmp_path / "p.tflite", "tflite")
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="cannot write") as err:
        export(model, tmp_path / "missing" / "p.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="it is a folder"):
        export(model, tmp_path, "torchscript")
    with pytest.raises(ExportError, match="unknown export format"):
        export_checkpoint(tmp_path / "no-run", tmp_path / "p.onnx", "pb")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
