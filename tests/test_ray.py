"""IMPALA with Ray actors (--actors ray): a run and its resume, an actor process killed mid-run
(Ray restarts it, the restart is counted), Ctrl-C of a CLI run that started its own Ray instance,
and the flag errors. One Ray instance serves the module; no process outlives it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from agents import commands, config, impala
from agents.config import ConfigError, TrainConfig
from test_impala import ROOT, _cmdline, descendants, running, wait_until_gone

ray = pytest.importorskip("ray")

TINY = ["--algo", "impala", "--actors", "ray", "--env", "urlstm/TMazePassive-v0", "--env-kwargs",
        "length=3", "--core", "gru", "--num-envs", "4", "--num-actors", "2", "--unroll-length", "8",
        "--learner-batch", "2", "--hidden-size", "16", "--embed-size", "16", "--eval-episodes", "0",
        "--no-progress", "--device", "cpu"]


def workers() -> set[int]:
    """This test process's Ray actor processes stepping envs (Ray titles them ray::UnrollWorker)."""
    return {p for p in descendants(os.getpid()) if "ray::UnrollWorker" in _cmdline(p)}


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; the pools use it and leave it running."""
    before = descendants(os.getpid())
    tests = os.path.dirname(os.path.abspath(__file__))  # the actors unpickle test_impala's env
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    started = descendants(os.getpid()) - before
    assert any("raylet" in _cmdline(p) for p in started), [_cmdline(p) for p in started]
    try:
        yield
    finally:
        seen = {p for p in descendants(os.getpid()) - before
                if "resource_tracker" not in _cmdline(p)}  # multiprocessing's, not Ray's
        ray.shutdown()
        left = wait_until_gone(seen, timeout=20)
        assert not left, [(p, _cmdline(p)) for p in left]


def run(tmp_path, *flags, name="run", stop=None):
    return train.run_train([*TINY, "--logdir", str(tmp_path), "--run-name", name, *flags],
                           stop=stop)


def test_ray_actors_run_then_resume(ray_instance, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, s = run(tmp_path, "--total-steps", "160")
    assert code == 0 and s["status"] == "finished", s
    assert s["total_steps"] == 160 and s["updates"] == 5 and s["actor_restarts"] == 0
    assert json.load(open(os.path.join(s["run_dir"], "config.json")))["actors"] == "ray"
    ea = EventAccumulator(s["run_dir"])
    ea.Reload()
    assert [e.value for e in ea.Scalars("perf/actor_restarts")] == [0.0] * 5
    assert "losses/policy_loss" in ea.Tags()["scalars"]
    assert not wait_until_gone(workers())
    # continue the run, with the local actors this time: the transport may change on resume
    code, r = train.run_train(["--resume", s["run_dir"], "--total-steps", "320", "--actors", "local"])
    assert code == 0 and r["status"] == "finished" and r["total_steps"] == 320 and r["updates"] == 10


def test_killed_ray_actor_is_restarted_and_counted(ray_instance, tmp_path):
    killed: list[int] = []

    def stop(update):
        if update >= 2 and not killed:
            deadline = time.monotonic() + 60  # the second actor may still be starting
            while len(workers()) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = sorted(workers())
            assert len(pids) == 2, [(p, _cmdline(p)) for p in descendants(os.getpid())]
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        elif killed and not reported():
            time.sleep(1.0)  # each remaining update gives Ray a second to report the death
        return False

    def reported() -> bool:
        log = tmp_path / "run" / "actors.log"
        return log.exists() and "died" in log.read_text()

    code, s = run(tmp_path, "--total-steps", "960", stop=stop)
    assert killed and code == 0 and s["status"] == "finished", s
    assert s["total_steps"] == 960 and s["actor_restarts"] == 1
    assert not running(set(killed))
    log = open(os.path.join(s["run_dir"], "actors.log")).read()
    assert re.search(r"actor \d died \(its process died .*\); Ray restarts it", log), log
    left = wait_until_gone(workers())
    assert not left, [(p, _cmdline(p)) for p in left]


def test_ray_actor_whose_env_raises_is_restarted(ray_instance, tmp_path):
    from test_impala import FaultyEnv

    flag = tmp_path / "crashed"
    cfg = TrainConfig(algo="impala", actors="ray", env="UrlstmFaulty-v0",
                      env_kwargs={"flag_file": str(flag), "fail_at": 5, "importer": FaultyEnv},
                      core="gru", num_envs=4, num_actors=2, unroll_length=8, learner_batch=2,
                      hidden_size=16, embed_size=16, total_steps=640, eval_episodes=0,
                      progress=False, device="cpu")
    venv = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    run_dir = tmp_path / "faulty"
    run_dir.mkdir()
    try:
        s = impala.train(cfg, venv, policy, str(run_dir), torch.device("cpu"))
    finally:
        venv.close()
    assert flag.exists() and s["status"] == "finished", s
    assert s["actor_restarts"] == 1 and s["total_steps"] == 640
    assert any("RuntimeError: the simulator crashed" in e for e in s["actor_errors"]), s
    log = (run_dir / "actors.log").read_text()
    assert "the simulator crashed" in log and "Ray restarts it" in log
    assert not wait_until_gone(workers())


def test_ctrl_c_of_a_run_with_its_own_ray_instance_leaves_no_process(tmp_path):
    """A real CLI run starting its own Ray instance; SIGINT to its process group (as Ctrl-C does):
    it saves a checkpoint, exits 0, and every process it started (Ray's included) is gone."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--total-steps", "10000000",
           "--logdir", str(tmp_path), "--run-name", "r", "--save-every", "1000000"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        run_dir = tmp_path / "r"
        while time.monotonic() < deadline:
            seen |= descendants(p.pid)
            logged = run_dir.exists() and any(
                f.startswith("events.out") and os.path.getsize(run_dir / f) > 2000
                for f in os.listdir(run_dir))
            if logged:
                break
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        seen |= descendants(p.pid)
        assert any("raylet" in _cmdline(c) for c in seen), [_cmdline(c) for c in seen]
        assert any("ray::UnrollWorker" in _cmdline(c) for c in seen)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err
    assert "interrupted:" in out
    assert "Traceback" not in err, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["total_steps"] > 0
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
    left = wait_until_gone(seen, timeout=20)
    assert not left, [(c, _cmdline(c)) for c in left]


@pytest.mark.parametrize("argv, message", [
    (["--actors", "ray"], "--actors ray needs --algo impala"),
    (["--algo", "impala", "--ray-address", "auto"], "--ray-address needs --actors ray"),
    (["--algo", "impala", "--actors", "rpc"], "--actors must be local or ray"),
])
def test_bad_combinations_are_one_line_and_exit_code_2(argv, message, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_without_ray_the_error_names_the_extra(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        TrainConfig(algo="impala", actors="ray")
    TrainConfig(algo="impala")  # the local pool needs no Ray
