"""The public policy API: the space codec, the policy description in checkpoints, load_policy and
act on a checkpoint trained here, the examples of docs/deploy.md, and one-line load errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from policies import PolicyLoadError, PolicyState, RecurrentPolicy, load_policy
from policies.actor_critic import ActorCritic
from policies.export import export_checkpoint
from policies.space_codec import space_from_dict, space_to_dict

ROOT = Path(__file__).resolve().parent.parent
SPACES = [
    spaces.Box(-1.0, 1.0, (3,), np.float32),
    spaces.Box(np.array([-np.inf, 0.0]), np.array([np.inf, 5.0]), dtype=np.float64),
    spaces.Box(0, 255, (7, 7, 3), np.uint8),
    spaces.Discrete(5, start=-2),
    spaces.MultiDiscrete([3, 4, 2], start=[1, 0, 0]),
    spaces.MultiBinary([2, 3]),
    spaces.Dict([("z", spaces.Discrete(2)), ("a", spaces.Tuple((spaces.MultiBinary(4),
                                                                spaces.Box(-2, 2, (2,)))))]),
]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_space_codec_round_trips_through_strict_json(space):
    text = json.dumps(space_to_dict(space), allow_nan=False)
    back = space_from_dict(json.loads(text))
    assert repr(back) == repr(space)
    if isinstance(space, spaces.Box):
        np.testing.assert_array_equal(back.low, space.low)
        np.testing.assert_array_equal(back.high, space.high)
        assert back.dtype == space.dtype
    if isinstance(space, spaces.Dict):
        assert list(back.spaces) == ["z", "a"]  # the order the encoder concatenates in
    assert back == space


def test_space_codec_rejects_what_it_cannot_describe():
    with pytest.raises(ValueError, match="cannot describe space"):
        space_to_dict(spaces.Text(5))
    with pytest.raises(ValueError, match="unknown space type 'Graph'"):
        space_from_dict({"type": "Graph"})
    with pytest.raises(ValueError, match="bad space description"):
        space_from_dict({"type": "Discrete"})


def test_description_rebuilds_the_same_network():
    obs = spaces.Dict({"image": spaces.Box(0, 255, (5, 5, 3), np.uint8),
                       "pos": spaces.Discrete(4)})
    model = ActorCritic(obs, spaces.MultiDiscrete([3, 2]), core="gru:CR", hidden_size=8,
                        embed_size=8, num_layers=2, prev_action_reward=False,
                        core_options={"impl": "reference"})
    rebuilt = ActorCritic.from_description(json.loads(json.dumps(model.describe())))
    assert rebuilt.arguments == model.arguments and not rebuilt.prev_action_reward
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="version 7"):
        ActorCritic.from_description({**model.describe(), "version": 7})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained T-maze run (L = 3), written by the training command itself."""
    logdir = tmp_path_factory.mktemp("runs")
    code, summary = train.run_train([
        "--env", "urlstm/TMazePassive-v0", "--env-kwargs", "length=3", "--num-envs", "4",
        "--num-steps", "8", "--seq-len", "8", "--num-minibatches", "1", "--update-epochs", "1",
        "--hidden-size", "8", "--embed-size", "8", "--total-steps", "64", "--eval-episodes", "0",
        "--no-progress", "--device", "cpu", "--logdir", str(logdir), "--run-name", "tmaze"])
    assert code == 0
    return Path(summary["run_dir"])


def test_load_policy_from_folder_and_file_holds_the_trained_weights(run_dir):
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    rng = torch.get_rng_state()
    for where in (run_dir, run_dir / "checkpoint.pt", str(run_dir)):
        policy = load_policy(where)
        assert isinstance(policy, RecurrentPolicy) and not policy.model.training
        assert policy.config["env_kwargs"] == {"length": 3} and policy.config["core"] == "urlstm"
        assert policy.action_space == spaces.Discrete(4) and policy.uses_reward
        for key, value in saved["model"].items():
            torch.testing.assert_close(policy.model.state_dict()[key], value, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the caller's RNG alone


def test_act_carries_state_and_clears_it_at_episode_starts(run_dir):
    policy = load_policy(run_dir)
    state = policy.initial_state(3)
    assert isinstance(state, PolicyState)
    assert [tuple(s.shape) for s in state.core] == [(1, 3, 8)] * 2
    obs = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
    start = np.ones(3, bool)
    action, after = policy.act(obs, state, start)
    assert action.shape == (3,) and action.dtype == np.int64 and set(action) <= {0, 1, 2, 3}
    assert torch.equal(after.prev_action, torch.as_tensor(action))
    _, moved = policy.act(obs, after, ~start, reward=np.ones(3, np.float32))
    assert not torch.allclose(moved.core[1], after.core[1])  # carried on from ``after``
    again, fresh = policy.act(obs, after, start, reward=np.ones(3, np.float32))  # as from zeros
    np.testing.assert_array_equal(again, action)
    for a, b in zip(fresh.core, after.core):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pass reward="):
        policy.act(obs, after, ~start)
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        policy.act(obs[0], after, start)
    sampled, _ = policy.act(torch.as_tensor(obs), state, torch.ones(3, dtype=torch.bool),
                            greedy=False)
    assert sampled.shape == (3,)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_examples_of_the_deploy_page_run(run_dir, tmp_path, monkeypatch):
    load_example, onnx_example = python_blocks(ROOT / "docs" / "deploy.md")
    assert len(load_example.splitlines()) <= 22
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    code = compile(load_example.replace('"runs/tmaze"', repr(str(run_dir))), "deploy.md", "exec")
    with contextlib.redirect_stdout(out):
        exec(code, {})  # noqa: S102 - the page's own example
    assert re.fullmatch(r"greedy return over 1\d\d episodes: -?\d\.\d{3}\n", out.getvalue())
    info = export_checkpoint(run_dir, tmp_path / "tmaze.onnx", "onnx")
    assert info["inputs"] == ["obs", "state_0", "state_1", "episode_start", "prev_action",
                              "prev_reward"]
    assert info["outputs"] == ["logits", "value", "next_state_0", "next_state_1"]
    scope: dict = {}
    code = compile(onnx_example.replace("length=50", "length=3"), "deploy.md", "exec")
    exec(code, scope)  # noqa: S102 - the page's own example
    assert scope["logits"].shape == (8, 4) and scope["state"][0].shape == (1, 8, 8)


def test_load_errors_are_one_line(run_dir, tmp_path):
    data = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in data.items() if k != "policy"}, old)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pt"
    torch.save({**data, "model": {**data["model"], "value_head.bias": torch.zeros(3)}}, wrong)
    other = tmp_path / "other.pt"
    torch.save({"model": 1}, other)
    cases = {tmp_path / "nowhere": "no checkpoint at", tmp_path: "no checkpoint at",
             old: "older version", corrupt: "not a readable checkpoint",
             wrong: "weights do not fit", other: "not a urlstm checkpoint"}
    for path, message in cases.items():
        with pytest.raises(PolicyLoadError, match=message) as err:
            load_policy(path)
        assert "\n" not in str(err.value)
