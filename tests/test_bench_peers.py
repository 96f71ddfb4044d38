"""benchmarks/peers.py without the peers: its flags, its commands, its arithmetic, its CPU clock.

Nothing here needs the peers' virtual environments: the summary is checked on made-up timings, and
the job runner on a small Python program that leaves a CPU-burning orphan behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.peer_jobs import runner

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, words", [
    (["--steps", "1000"], "multiple of 2048"),
    (["--steps", "0"], "multiple of 2048"),
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "two"], "--rounds"),
    (["--peers", "ours,rllib"], "unknown peer 'rllib'"),
    (["--tasks", "cartpole"], "unknown task 'cartpole'"),
    (["--torch-threads", "-1"], "--torch-threads"),
    (["--timeout", "0"], "--timeout"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_flags_give_one_line_and_exit_2(argv, words, capsys):
    assert peers.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err


def test_bad_flags_from_the_command_line():
    done = subprocess.run([sys.executable, "benchmarks/peers.py", "--steps", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [("error: --steps must be a positive multiple of 2048 "
                                         "(16 envs x 128-step rollouts), got 3")]


def test_names_accept_short_and_full_ids_once_each():
    args = peers.parse_args(["--tasks", "popgym,MiniGrid-MemoryS7-v0,minigrid",
                             "--peers", "pufferlib,ours", "--steps", "4096"])
    assert args.tasks == ["popgym-RepeatPreviousMedium-v0", "MiniGrid-MemoryS7-v0"]
    assert args.peers == ["pufferlib", "ours"]  # the order given: the order of each round


def test_every_learner_gets_the_shared_settings(tmp_path):
    args = peers.parse_args(["--steps", "4096", "--torch-threads", "1"])
    cmd, env = peers.job_command("ours", "MiniGrid-MemoryS7-v0", args, 3, str(tmp_path), "x.json")
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[1].endswith("train.py") and flags["--total-steps"] == "4096"
    assert (flags["--num-envs"], flags["--num-steps"], flags["--seq-len"]) == ("16", "128", "128")
    assert (flags["--update-epochs"], flags["--num-minibatches"], flags["--hidden-size"]) == ("4", "4", "128")
    assert flags["--seed"] == "3" and flags["--torch-threads"] == "1" and env["OMP_NUM_THREADS"] == "1"
    import train

    cfg = train.parse_train(cmd[2:]).cfg  # train.py accepts the command as written
    assert (cfg.total_steps, cfg.core, cfg.eval_episodes) == (4096, "lstm", 0)
    for peer in ("sb3-contrib", "pufferlib", "sample-factory"):
        cmd, env = peers.job_command(peer, "popgym-RepeatPreviousMedium-v0", args, 0, "w", "o.json")
        flags = dict(zip(cmd[2::2], cmd[3::2]))
        assert flags == {"--task": "popgym-RepeatPreviousMedium-v0", "--steps": "4096",
                         "--num-envs": "16", "--rollout": "128", "--epochs": "4",
                         "--minibatches": "4", "--hidden": "128", "--seed": "0",
                         "--workdir": "w", "--out": "o.json"}
        python = sys.executable if peer == "sb3-contrib" else str(runner.venv_python(peer))
        assert cmd[0] == python and env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = peers.parse_args(["--torch-threads", "0"])
    assert peers.job_command("pufferlib", "MiniGrid-MemoryS7-v0", args, 0, "w", "o")[1] == {}


def _job(peer, task, wall, cpu, steps=32768, error=None, loop=None):
    rec = {"peer": peer, "task": task, "wall_s": wall, "cpu_s": cpu}
    if error:
        rec["error"] = error
    else:
        rec["report"] = {"env_steps": steps, "loop_s": loop}
    return rec


def test_summary_totals_rates_and_ratios():
    task, other = "MiniGrid-MemoryS7-v0", "popgym-RepeatPreviousMedium-v0"
    records = [
        _job("ours", task, 10.0, 10.0, loop=7.0), _job("pufferlib", task, 40.0, 80.0, loop=30.0),
        _job("sample-factory", task, 99.0, 99.0, error="exit code 1: ..."),
        _job("ours", task, 10.0, 10.0, loop=9.0), _job("pufferlib", task, 60.0, 120.0, steps=36864),
        _job("pufferlib", other, 20.0, 30.0, steps=2048),
    ]
    rows = peers.summarize(records, ["ours", "pufferlib", "sample-factory"], [task, other])
    by = {(r["peer"], r["task"]): r for r in rows}
    ours, puffer = by["ours", task], by["pufferlib", task]
    assert ours["sps"] == 3276.8 and ours["cores_busy"] == 1.0 and ours["ours_speedup_wall"] is None
    assert ours["loop_sps"] == 4096.0 and by["pufferlib", task]["loop_sps"] is None  # one not reported
    assert puffer["sps"] == round(69632 / 100.0, 1) and puffer["cores_busy"] == 2.0
    assert puffer["env_steps_per_job"] == [32768, 36864] and puffer["wall_s_per_job"] == [40.0, 60.0]
    assert puffer["ours_speedup_wall"] == 4.71  # SPS over SPS: 3276.8 / 696.32
    assert puffer["ours_speedup_cpu"] == 9.41  # CPU-s per step: (200 / 69632) / (20 / 65536)
    failed = by["sample-factory", task]
    assert (failed["rounds_ok"], failed["rounds_failed"]) == (0, 1)
    assert "sps" not in failed and failed["ours_speedup_wall"] is None
    alone = by["pufferlib", other]  # no run of ours on that task: no ratio
    assert alone["sps"] == 102.4 and alone["ours_speedup_cpu"] is None


def test_cpu_time_counts_the_orphans_a_job_leaves(tmp_path):
    """The job exits at once; its grandchild, left behind, burns 0.3 s of CPU and is counted."""
    job = ("import os, time\n"
           "if os.fork() == 0:\n"
           "    if os.fork() == 0:\n"
           "        t = time.process_time()\n"
           "        while time.process_time() - t < 0.3: pass\n"
           "    os._exit(0)\n"
           "os.wait()\n")
    probe = ("import json, sys; from benchmarks.peer_jobs import runner; "
             "assert runner.become_subreaper(); "
             f"print(json.dumps(runner.timed_run([sys.executable, '-c', {job!r}], {{}}, 60, {str(tmp_path)!r})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout)
    assert rec["rc"] == 0 and rec["orphans"] == 1
    assert rec["cpu_s"] >= 0.3


def test_a_failing_job_is_reported_with_its_last_lines(tmp_path):
    rec = runner.timed_run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], {}, 60,
                           str(tmp_path))
    assert rec["rc"] == 3 and rec["stderr_tail"] == "boom"


def test_the_peers_see_the_tasks_as_documented():
    """MiniGrid: the 7x7x3 view flattened (MiniGrid's own view, computed by envs/minigrid_view.py);
    POPGym: the Discrete(4) observation one-hot."""
    import gymnasium as gym
    import minigrid  # noqa: F401
    import numpy as np
    from minigrid.wrappers import ImgObsWrapper

    from benchmarks.peer_jobs import tasks

    env, ref = tasks.make_env(tasks.TASKS[0]), ImgObsWrapper(gym.make(tasks.TASKS[0]))
    assert env.observation_space == gym.spaces.Box(0, 255, (147,), np.uint8)
    obs, ref_obs = env.reset(seed=5)[0], ref.reset(seed=5)[0]
    for action in [0, 2, 2, 1, 2, 2, 0, 2]:
        np.testing.assert_array_equal(obs, ref_obs.reshape(-1))
        obs, ref_obs = env.step(action)[0], ref.step(action)[0]
    env = tasks.make_env(tasks.TASKS[1])
    obs = env.reset(seed=0)[0]
    assert env.observation_space.shape == (4,) and sorted(obs.tolist()) == [0, 0, 0, 1]
