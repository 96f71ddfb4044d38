"""--learn-initial-state in both learners: the learned state moves with training, is saved in the
checkpoint, is what IMPALA's actors start from, comes back with load_policy and into its export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import train
from policies import load_policy
from policies.export import export_checkpoint

TINY = ["--env", "urlstm/TMazePassive-v0", "--env-kwargs", "length=3", "--core", "urlstm",
        "--hidden-size", "8", "--embed-size", "8", "--eval-episodes", "0", "--no-progress",
        "--device", "cpu", "--learn-initial-state"]
LEARNERS = {
    "ppo": ["--num-envs", "4", "--num-steps", "8", "--seq-len", "8", "--num-minibatches", "1",
            "--total-steps", "128", "--learning-rate", "1e-2"],
    "impala": ["--algo", "impala", "--num-envs", "4", "--num-actors", "2", "--unroll-length", "8",
               "--total-steps", "128", "--learning-rate", "1e-2"],
}


@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_the_learned_state_trains_and_is_saved_loaded_and_exported(algo, tmp_path):
    code, summary = train.run_train([*TINY, *LEARNERS[algo], "--logdir", str(tmp_path),
                                     "--run-name", algo])
    assert code == 0 and summary["status"] == "finished", summary
    run_dir = Path(summary["run_dir"])
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    learned = [saved[f"core.state0.{i}"] for i in range(2)]  # h and c of the UR-LSTM
    assert all(s.shape == (1, 1, 8) for s in learned)
    assert any(bool(s.abs().max() > 1e-4) for s in learned), "the episodes' resets train it"

    policy = load_policy(run_dir)
    for s, want in zip(policy.initial_state(3).core, learned):
        torch.testing.assert_close(s, want.expand(1, 3, 8))
    # the deployed policy starts every episode there, whatever state it is handed
    obs = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
    start = np.ones(3, bool)
    action, state = policy.act(obs, policy.initial_state(3), start)
    state = state._replace(core=tuple(torch.randn_like(s) for s in state.core))
    again, _ = policy.act(obs, state, start)
    np.testing.assert_array_equal(again, action)

    import onnxruntime as ort

    path = export_checkpoint(run_dir, tmp_path / "p.onnx", "onnx")  # what train.py export runs
    session = ort.InferenceSession(path["file"])
    names = [i.name for i in session.get_inputs()]
    feed = {"obs": obs, "state_0": np.random.randn(1, 3, 8).astype(np.float32),
            "state_1": np.random.randn(1, 3, 8).astype(np.float32), "episode_start": start,
            "prev_action": np.zeros(3, np.int64), "prev_reward": np.zeros(3, np.float32)}
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {n: feed[n] for n in names})))
    for got, want in zip((out["next_state_0"], out["next_state_1"]), state_after(policy, obs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def state_after(policy, obs) -> tuple[np.ndarray, ...]:
    """The core state after the first step of an episode, from the live policy."""
    _, state = policy.act(obs, policy.initial_state(len(obs)), np.ones(len(obs), bool))
    return tuple(s.numpy() for s in state.core)
