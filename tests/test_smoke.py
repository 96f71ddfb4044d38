"""The main commands as a user types them, in real subprocesses, at their default sizes: every
default kept except a small step budget, so the compiled loop, the GEMM sizes and the evaluation
are the ones a user's first run meets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr
    return out


def test_train_with_its_defaults(tmp_path):
    """`python train.py`: the default UR-LSTM on the T-maze (32 envs, 102-step rollouts), one update."""
    run("train.py", "--total-steps", "3264", "--eval-episodes", "8", "--logdir", str(tmp_path), "--run-name", "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert summary["status"] == "finished" and summary["total_steps"] == 3264
    assert summary["final_eval_episodes"] == 8
    assert config["core"] == "urlstm" and config["num_envs"] == 32 and config["hidden_size"] == 128


def test_train_impala_with_its_defaults(tmp_path):
    """`python train.py --algo impala`: two actor processes, the default unrolls, a few updates."""
    run("train.py", "--algo", "impala", "--total-steps", "2448", "--eval-episodes", "8", "--logdir",
        str(tmp_path), "--run-name", "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["total_steps"] >= 2448


def test_supervised_copy_and_adding_at_their_default_sizes(tmp_path):
    """`python -m supervised copy` / `adding`: default model and batch sizes (hidden 256 / 128, batch
    10 / 50, sequences of 500 / 1000 steps), 3 steps and a small held-out set."""
    for task in ("copy", "adding"):
        out = run("-m", "supervised", task, "--steps", "3", "--eval-every", "3", "--eval-size", "50", "--logdir",
                  str(tmp_path), "--run-name", task, "--no-progress")
        assert (tmp_path / task / "summary.json").exists(), out.stdout
