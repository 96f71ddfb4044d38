"""Evaluation: many envs at once with the fixed per-env quota, the memory cap, the step guard, and
the command line's one-line errors (exit code 2)."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
import train
from agents import commands
from agents import evaluate as ev
from agents.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


def tiny(**kw) -> TrainConfig:
    base = dict(env="urlstm/TMazePassive-v0", env_kwargs={"length": 3}, num_envs=2, num_steps=8,
                seq_len=8, num_minibatches=1, hidden_size=8, embed_size=8, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def policy_for(cfg: TrainConfig):
    torch.manual_seed(0)
    probe = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, probe, CPU)
    probe.close()
    return policy.eval()


class NeverEnds(gym.Env):
    """A one-state env whose episodes never end (no time limit)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


def test_one_env_per_episode_by_default_and_every_episode_counted():
    cfg = tiny()
    r = ev.evaluate(policy_for(cfg), cfg, CPU, episodes=7)
    assert r["num_envs"] == 7 and r["episodes"] == 7 and r["length_mean"] == 4.0  # passive L + 1
    assert 0.0 <= r["success_rate"] <= 1.0


def test_fixed_quota_with_fewer_envs_than_episodes():
    cfg = tiny()
    r = ev.evaluate(policy_for(cfg), cfg, CPU, episodes=10, num_envs=3)  # quotas 4, 3, 3
    assert r["num_envs"] == 3 and r["episodes"] == 10


def test_a_batch_of_envs_plays_the_episodes_single_envs_play():
    """Env i of a batch seeded s plays what one env seeded s + i plays: batching changes nothing."""
    cfg = tiny(env_kwargs={"length": 5})
    policy = policy_for(cfg)
    batch = ev.evaluate(policy, cfg, CPU, episodes=6, greedy=True, seed=100)
    singles = [ev.evaluate(policy, cfg, CPU, episodes=1, greedy=True, seed=100 + i) for i in range(6)]
    assert batch["return_mean"] == pytest.approx(np.mean([s["return_mean"] for s in singles]), abs=1e-6)
    assert batch["success_rate"] == pytest.approx(np.mean([s["success_rate"] for s in singles]))


def test_envs_capped_by_the_memory_estimate():
    cfg = tiny()
    policy = policy_for(cfg)
    per_env = ev.bytes_per_env(policy)
    assert per_env >= ev.ENV_BYTES
    assert ev.eval_envs(policy, CPU, 100, free=10**15) == (100, None)
    n, note = ev.eval_envs(policy, CPU, 100, free=2 * 10 * per_env)  # half of it holds 10 envs
    assert n == 10 and "not 100" in note and "free" in note
    with pytest.raises(ev.EvaluationError, match=r"need about .* free"):
        ev.eval_envs(policy, CPU, 100, num_envs=50, free=2 * 10 * per_env)  # asked for explicitly
    with pytest.raises(ev.EvaluationError, match="free"):
        ev.eval_envs(policy, CPU, 100, free=per_env)  # not even one env
    assert ev.free_memory(CPU) is None or ev.free_memory(CPU) > 0


def test_an_episode_longer_than_the_guard_stops_the_evaluation(monkeypatch):
    gym.register("urlstm-test/NeverEnds-v0", entry_point=NeverEnds)
    try:
        cfg = tiny(env="urlstm-test/NeverEnds-v0", env_kwargs={})
        policy = policy_for(cfg)
        with pytest.raises(ev.EvaluationError, match="did not end within 50 steps"):
            ev.evaluate(policy, cfg, CPU, episodes=3, max_episode_steps=50)
    finally:
        gym.registry.pop("urlstm-test/NeverEnds-v0")


def test_episodes_known_to_outlast_the_guard_fail_before_playing():
    cfg = tiny(env_kwargs={"length": 50})
    with pytest.raises(ev.EvaluationError, match="up to 51 steps, more than .* guard of 10"):
        ev.evaluate(policy_for(cfg), cfg, CPU, episodes=3, max_episode_steps=10)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------

def cli(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = train.main(["--env-kwargs", "length=3", "--num-envs", "2", "--num-steps", "8", "--seq-len", "8",
                       "--num-minibatches", "1", "--update-epochs", "1", "--hidden-size", "8",
                       "--embed-size", "8", "--no-progress", "--device", "cpu", "--total-steps", "16",
                       "--eval-episodes", "0", "--logdir", str(out), "--run-name", "r"])
    assert code == 0
    return out / "r"


def one_line_error(p, *parts):
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_cli_eval_plays_one_env_per_episode(run_dir):
    p = cli("eval", "--checkpoint", str(run_dir), "--episodes", "9", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 9 and result["num_envs"] == 9


def test_cli_eval_whose_envs_cannot_fit_in_memory(run_dir):
    p = cli("eval", "--checkpoint", str(run_dir), "--episodes", "100000000", "--num-envs", "100000000")
    one_line_error(p, "100000000 envs need about", "is free", "--num-envs")


def test_cli_eval_whose_episodes_outlast_the_step_guard(run_dir):
    p = cli("eval", "--checkpoint", str(run_dir), "--max-episode-steps", "2")
    one_line_error(p, "last up to 4 steps", "guard of 2 steps", "raise --max-episode-steps")


def test_cli_train_whose_episodes_outlast_the_step_guard_stops_before_training(tmp_path):
    p = cli("--env-kwargs", "length=200000", "--no-progress", "--device", "cpu", "--logdir", str(tmp_path))
    one_line_error(p, "up to 200,001 steps", "guard of 100,000 steps", "--eval-episodes 0")
    assert not os.listdir(tmp_path)  # no run folder: nothing started


def test_train_whose_final_evaluation_cannot_finish_keeps_its_checkpoint_and_exits_2(
        tmp_path, monkeypatch, capsys):
    gym.register("urlstm-test/NeverEnds-v0", entry_point=NeverEnds)
    monkeypatch.setattr(ev, "MAX_EPISODE_STEPS", 50)
    try:
        code = train.main(["--env", "urlstm-test/NeverEnds-v0", "--env-kwargs", "vectorization='sync'",
                           "--num-envs", "2",
                           "--num-steps", "8", "--seq-len", "8", "--num-minibatches", "1",
                           "--update-epochs", "1", "--hidden-size", "8", "--embed-size", "8",
                           "--no-progress", "--device", "cpu", "--total-steps", "16",
                           "--eval-episodes", "2", "--logdir", str(tmp_path), "--run-name", "r"])
    finally:
        gym.registry.pop("urlstm-test/NeverEnds-v0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: an episode of urlstm-test/NeverEnds-v0 did not end")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and "did not end" in summary["final_eval_error"]
    assert (tmp_path / "r" / "checkpoint.pt").exists()


def test_ablating_the_memory_of_a_trained_tmaze_agent(tmp_path):
    """A tiny T-maze agent (L = 2) trained to success 1.0 falls to at most chance when its core
    state is zeroed before every step (python train.py eval --ablate-memory)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "train.py", "--env-kwargs", "length=2", "--total-steps",
                            "30000", "--num-envs", "16", "--hidden-size", "32", "--embed-size", "32",
                            "--learning-rate", "3e-3", "--eval-episodes", "0", "--no-progress",
                            "--logdir", str(tmp_path), "--run-name", "t"], cwd=root,
                           capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    results = {}
    for flags in ([], ["--ablate-memory"]):
        p = subprocess.run([sys.executable, "train.py", "eval", "--checkpoint", str(tmp_path / "t"),
                            "--episodes", "200", "--json", *flags], cwd=root, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        results[bool(flags)] = json.loads(p.stdout.strip().splitlines()[-1])
    assert results[False]["success_rate"] >= 0.9 and not results[False]["ablate_memory"]
    assert results[True]["success_rate"] <= 0.6 and results[True]["ablate_memory"]


def test_the_episode_limit_probe_leaves_async_workers_running():
    """Asking an async worker for an attribute its env lacks would stop it: POPGym's envs have no
    ``max_steps``, and the run that asked must still be able to step them."""
    from agents.evaluate import episode_limit

    venv = envs.make("popgym-RepeatFirstEasy-v0", 2, 0, vectorization="async")
    try:
        assert episode_limit(venv) is None
        venv.reset()
        venv.step(venv.action_space.sample())
    finally:
        venv.close()
