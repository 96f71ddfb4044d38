"""IMPALA: the learner re-runs unrolls exactly as the actor acted, smoke runs with 2 actors, resume,
an actor killed or raising mid-run is restarted, and no child process outlives a run (normal end,
exception, SIGINT, SIGTERM). Plus a slow learning check on a short T-maze."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from agents import actor, commands, impala, local_actors
from agents.config import ConfigError, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--algo", "impala", "--env", "urlstm/TMazePassive-v0", "--env-kwargs", "length=3",
        "--num-envs", "4", "--num-actors", "2", "--unroll-length", "8", "--learner-batch", "2",
        "--hidden-size", "16", "--embed-size", "16", "--eval-episodes", "4", "--no-progress",
        "--device", "cpu"]


def run(tmp_path, *flags, name="run", stop=None):
    return train.run_train([*TINY, "--logdir", str(tmp_path), "--run-name", name, *flags],
                           stop=stop)


# ---------------------------------------------------------------------------------------------
# processes, read from /proc (no psutil)
# ---------------------------------------------------------------------------------------------

def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[1])  # zombies do not count as running


def descendants(pid: int) -> set[int]:
    """Running (non-zombie) processes below ``pid``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _ppid(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pids: set[int]) -> set[int]:
    return {p for p in pids if _ppid(p) is not None}


def our_children() -> set[int]:
    """Children of the test process, without multiprocessing's resource tracker (one per Python
    process that ever used spawn; it exits with its parent and is no actor)."""
    return {p for p in descendants(os.getpid()) if "resource_tracker" not in _cmdline(p)}


def wait_until_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running(pids)


# ---------------------------------------------------------------------------------------------
# the learner sees what the actor did
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("core", ["urlstm", "stack:3"])
def test_learner_rerun_reproduces_the_behaviour_logprobs(core):
    """Two consecutive unrolls written by the actor's code path into shared slots; the learner's
    re-run from each slot's start state (episodes straddle unrolls, resets inside) gives the same
    log-probabilities, so on-policy importance ratios are exactly 1."""
    cfg = TrainConfig(algo="impala", env_kwargs={"length": 3}, num_envs=3, num_actors=1,
                      unroll_length=7, hidden_size=8, embed_size=8, core=core, progress=False)
    me = actor.Actor(cfg, seed=5)
    policy = me.policy
    buf = actor.Buffers(policy, num_buffers=2, unroll_length=7, envs_per_actor=3)
    for slot in (0, 1):
        me.unroll(buf, slot, version=slot)
    me.close()
    assert buf.version.tolist() == [0, 1]
    assert buf.reset[:, :7].any()
    assert any(s[1].abs().sum() > 0 for s in buf.states)  # the second unroll starts mid-memory
    batch = impala.take_batch(buf, [0, 1], torch.device("cpu"))
    assert batch.reset.shape == (8, 6) and batch.actions.shape == (7, 6)
    with torch.no_grad():
        logp = impala.rerun(policy, batch)[0]
    torch.testing.assert_close(logp[:7], batch.logprobs, rtol=1e-5, atol=1e-5)
    # a minibatch (--learner-minibatches) keeps each unroll's observations, state and actions together
    parts = batch.split(3)
    assert [p.actions.shape for p in parts] == [(7, 2)] * 3
    with torch.no_grad():
        for part in parts:
            logp = impala.rerun(policy, part)[0]
            torch.testing.assert_close(logp[:7], part.logprobs, rtol=1e-5, atol=1e-5)
    assert sorted(torch.cat([p.rewards for p in parts], 1).sum(0).tolist()) == \
        sorted(batch.rewards.sum(0).tolist())


def test_clipped_policy_loss():
    """On-policy (ratio 1) the clipped surrogate has the plain policy gradient; once the ratio leaves
    [1 - clip, 1 + clip] in the direction the advantage pushes, that sample's gradient is zero."""
    torch.manual_seed(0)
    mu = -torch.rand(6, 3, dtype=torch.float64) - 0.1
    adv = torch.randn(6, 3, dtype=torch.float64)
    grads = []
    for clip in (None, 0.2):
        logp = mu.clone().requires_grad_()
        impala.policy_loss(logp, mu, mu, adv, clip, 1.0).backward()
        grads.append(logp.grad)
    torch.testing.assert_close(grads[0], grads[1])
    logp = (mu + torch.tensor([0.5, -0.5, 0.05], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64).expand(6, 3)
    impala.policy_loss(logp, mu, mu, adv, 0.2, 1.0).backward()
    assert (logp.grad[:, :2] == 0).all() and (logp.grad[:, 2] < 0).all()
    # the other direction is not clipped: pulled back with the full ratio
    logp = (mu - 0.5).detach().requires_grad_()
    impala.policy_loss(logp, mu, mu, adv[:, :1].expand(6, 3), 0.2, 1.0).backward()
    torch.testing.assert_close(logp.grad, -torch.exp(torch.tensor(-0.5, dtype=torch.float64))
                               .expand(6, 3) / 18)

    # with the proximal policy (the learner's before the update): clipped against it, weighted
    # by min(rho_bar, pi_prox / mu)
    prox = mu + torch.tensor([0.3, 0.3, -0.7], dtype=torch.float64)
    logp = prox.clone().requires_grad_()
    adv = torch.ones(6, 3, dtype=torch.float64)
    impala.policy_loss(logp, mu, prox, adv, 0.2, 1.0).backward()
    weight = torch.tensor([1.0, 1.0, math.exp(-0.7)], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, (-weight / 18).expand(6, 3))
    logp = (prox + 0.5).requires_grad_()  # ratio to pi_prox e^0.5: clipped, no gradient
    impala.policy_loss(logp, mu, prox, adv, 0.2, 1.0).backward()
    assert (logp.grad == 0).all()


def test_update_changes_the_weights_and_reports_losses():
    cfg = TrainConfig(algo="impala", env_kwargs={"length": 3}, num_envs=2, num_actors=1,
                      unroll_length=5, hidden_size=8, embed_size=8, core="gru", progress=False)
    me = actor.Actor(cfg, seed=1)
    policy = me.policy
    buf = actor.Buffers(policy, 1, 5, 2)
    me.unroll(buf, 0, version=0)
    me.close()
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses = impala.update(policy, opt, impala.take_batch(buf, [0], torch.device("cpu")), cfg)
    assert {"policy_loss", "value_loss", "entropy", "uniform_kl", "importance_ratio",
            "rho_clipfrac"} <= set(losses)
    assert torch.isfinite(losses["value_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_shared_weights_publish_and_fetch():
    cfg = TrainConfig(algo="impala", env_kwargs={"length": 3}, num_envs=1, num_actors=1,
                      hidden_size=8, embed_size=8, progress=False)
    venv = actor.make_actor_envs(cfg, 1, seed=1)
    a, b = actor.make_actor_policy(cfg, venv), actor.make_actor_policy(cfg, venv)
    venv.close()
    shared = local_actors.SharedWeights(a)
    shared.publish(a, 3)
    assert shared.fetch(b, have=-1) == 3
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert shared.fetch(b, have=3) == 3  # same version: nothing reloaded
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of --num-actors"):
        TrainConfig(algo="impala", num_envs=5, num_actors=2)
    with pytest.raises(ConfigError, match="--algo must be ppo or impala"):
        TrainConfig(algo="a3c")
    with pytest.raises(ConfigError, match="--max-policy-lag"):
        TrainConfig(algo="impala", max_policy_lag=-1)


# ---------------------------------------------------------------------------------------------
# runs with actor processes
# ---------------------------------------------------------------------------------------------

def test_smoke_two_actors_then_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, s = run(tmp_path, "--total-steps", "160", "--max-policy-lag", "none", "--eval-every", "2")
    assert code == 0 and s["status"] == "finished", s
    assert s["algo"] == "impala" and s["total_steps"] == 160 and s["updates"] == 5
    assert s["actor_restarts"] == 0 and s["num_actors"] == 2 and s["policy_lag_mean"] >= 0
    run_dir = s["run_dir"]
    for f in ("config.json", "summary.json", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(run_dir, f))
    assert json.load(open(os.path.join(run_dir, "config.json")))["algo"] == "impala"
    ea = EventAccumulator(run_dir)
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("charts/SPS", "losses/policy_loss", "losses/value_loss", "losses/entropy",
                "perf/policy_lag_mean", "perf/policy_lag_max", "perf/dropped_unrolls",
                "perf/learn_s",
                "memory/gate_mean"):
        assert tag in tags, tag
    assert [e.step for e in ea.Scalars("charts/eval_success_rate")] == [64, 128, 160]  # + the final one
    assert not our_children()

    code, r = train.run_train(["--resume", run_dir, "--total-steps", "320", "--eval-episodes", "0"])
    assert code == 0 and r["status"] == "finished"
    assert r["total_steps"] == 320 and r["updates"] == 10
    assert not our_children()


def test_stale_unrolls_are_dropped(tmp_path):
    """--max-policy-lag 0 with 2 actors keeps only unrolls acted by the current weights."""
    code, s = run(tmp_path, "--total-steps", "128", "--max-policy-lag", "0", "--learner-batch", "1",
                  "--eval-episodes", "0")
    assert code == 0 and s["status"] == "finished"
    assert s["policy_lag_mean"] == 0.0


def test_learner_epochs_take_that_many_gradient_steps_per_batch(tmp_path):
    code, s = run(tmp_path, "--total-steps", "96", "--learner-epochs", "3", "--eval-episodes", "0")
    assert code == 0 and s["status"] == "finished" and s["updates"] == 3
    saved = torch.load(os.path.join(s["run_dir"], "checkpoint.pt"), weights_only=True)
    steps = {float(v["step"]) for v in saved["optimizer"]["state"].values()}
    assert steps == {9.0}  # 3 updates x 3 Adam steps


def test_learner_minibatches_with_the_clipped_loss(tmp_path):
    code, s = run(tmp_path, "--total-steps", "96", "--learner-epochs", "2", "--learner-minibatches",
                  "4", "--pg-loss", "clipped", "--eval-episodes", "0")
    assert code == 0 and s["status"] == "finished" and s["updates"] == 3
    saved = torch.load(os.path.join(s["run_dir"], "checkpoint.pt"), weights_only=True)
    steps = {float(v["step"]) for v in saved["optimizer"]["state"].values()}
    assert steps == {24.0}  # 3 updates x 2 epochs x 4 minibatches (4 unrolls of one env each)


def test_killed_actor_is_restarted_and_the_run_finishes(tmp_path):
    killed = []

    def stop(update):
        if update == 2:
            children = our_children()
            victims = sorted(c for c in children if "spawn_main" in _cmdline(c))  # the actors
            assert len(victims) == 2, [(c, _cmdline(c)) for c in children]
            os.kill(victims[0], signal.SIGKILL)
            killed.append(victims[0])
        return False

    code, s = run(tmp_path, "--total-steps", "480", "--eval-episodes", "0", stop=stop)
    assert killed and code == 0 and s["status"] == "finished", s
    assert s["total_steps"] == 480 and s["actor_restarts"] >= 1
    log = open(os.path.join(s["run_dir"], "actors.log")).read()
    assert re.search(r"actor \d died \(killed by signal SIGKILL\); restarting", log), log
    assert not our_children()


class FaultyEnv(gym.Env):
    """Episodes of 4 steps; the first time any copy reaches step ``fail_at`` it raises (the flag
    file makes it happen once across processes). ``importer`` is this class itself: as an env kwarg
    it is pickled to the actor processes, whose unpickling imports this module, which registers
    the id."""

    observation_space = spaces.Discrete(3)
    action_space = spaces.Discrete(2)

    def __init__(self, flag_file: str = "", fail_at: int = 6, importer=None):
        self.flag_file, self.fail_at, self.t, self.total = flag_file, fail_at, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        self.total += 1
        if self.total == self.fail_at and self.flag_file and not os.path.exists(self.flag_file):
            open(self.flag_file, "w").close()
            raise RuntimeError("the simulator crashed")
        return min(self.t, 2), float(action), self.t >= 4, False, {}


if "UrlstmFaulty-v0" not in gym.registry:
    gym.register("UrlstmFaulty-v0", entry_point=FaultyEnv)


def run_faulty(tmp_path, flag_file: str, fail_at: int, total_steps: int, eval_episodes: int = 0,
               stop=None, num_actors: int = 2) -> dict:
    cfg = TrainConfig(algo="impala", env="UrlstmFaulty-v0",
                      env_kwargs={"flag_file": flag_file, "fail_at": fail_at,
                                  "importer": FaultyEnv},
                      core="gru", num_envs=4, num_actors=num_actors, unroll_length=8,
                      learner_batch=2, hidden_size=16, embed_size=16, total_steps=total_steps,
                      eval_episodes=eval_episodes, progress=False, device="cpu")
    venv = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    run_dir = str(tmp_path / "faulty")
    os.makedirs(run_dir)
    try:
        return impala.train(cfg, venv, policy, run_dir, torch.device("cpu"), stop=stop)
    finally:
        venv.close()


def test_actor_whose_env_raises_is_reported_and_restarted(tmp_path):
    flag = tmp_path / "crashed"
    log_file = tmp_path / "faulty" / "actors.log"

    def stop(update):
        # slow the learner down until the crash is handled: one healthy actor could otherwise do
        # the whole tiny run before the other one has even started
        if not (log_file.exists() and "restarting it" in log_file.read_text()):
            time.sleep(0.05)
        return False

    s = run_faulty(tmp_path, str(flag), fail_at=5, total_steps=6400, eval_episodes=2, stop=stop)
    assert flag.exists()
    assert s["status"] == "finished", s
    assert s["actor_restarts"] == 1 and s["total_steps"] == 6400
    assert any("RuntimeError: the simulator crashed" in e for e in s["actor_errors"])
    log = open(os.path.join(s["run_dir"], "actors.log")).read()
    assert "the simulator crashed" in log and "restarting it" in log
    assert not our_children()


def test_actor_that_cannot_start_stops_the_run_with_its_error(tmp_path):
    # a flag path in a missing folder: every actor raises at its first step, every time
    s = run_faulty(tmp_path, str(tmp_path / "missing" / "x"), fail_at=1, total_steps=320,
                   num_actors=1)
    assert s["status"].startswith("failed: actor"), s
    assert "FileNotFoundError" in s["status"]
    assert os.path.isfile(s["checkpoint"])
    assert not our_children()


def test_no_children_after_an_exception_in_the_learner(tmp_path):
    def stop(update):
        if update == 2:
            raise RuntimeError("boom")
        return False

    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, "--total-steps", "10000", stop=stop)
    assert not our_children()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_to_the_cli_stops_everything_and_saves(tmp_path, sig):
    """A real `python train.py --algo impala`: SIGINT to its process group (as Ctrl-C does) or
    SIGTERM to the learner alone; it saves a checkpoint, exits 0, and every process it started is
    gone."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--total-steps", "10000000",
           "--logdir", str(tmp_path), "--run-name", "r", "--save-every", "1000000"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 90
        events = tmp_path / "r"
        # wait for both actors and for the learner to have logged (actors are producing)
        while time.monotonic() < deadline:
            seen |= descendants(p.pid)
            actors = [c for c in seen if "resource_tracker" not in _cmdline(c)]
            logged = events.exists() and any(
                f.startswith("events.out") and os.path.getsize(events / f) > 2000
                for f in os.listdir(events))
            if len(actors) >= 2 and logged:
                break
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        seen |= descendants(p.pid)
        assert len(seen) >= 2
        if sig == "SIGINT":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err
    assert "interrupted:" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["total_steps"] > 0
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
    assert not wait_until_gone(seen), [(c, _cmdline(c)) for c in running(seen)]


# ---------------------------------------------------------------------------------------------
# slow learning check (pytest -m slow)
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_impala_urlstm_learns_a_short_tmaze(tmp_path):
    """UR-LSTM with 2 actors (policy lag 2 to 4 updates) solves the T-maze of length 20: greedy
    success >= 0.9, which a memoryless core cannot pass (it guesses the side: 0.5 at best). Few envs
    per actor (4) give an update every 336 steps: with one gradient step per batch, 16 envs per
    actor (1,344 steps per update) stayed at chance in the same 600k steps."""
    code, s = train.run_train(["--algo", "impala", "--env-kwargs", "length=20", "--num-envs", "8",
                               "--num-actors", "2", "--unroll-length", "84", "--learner-batch", "1",
                               "--total-steps", "600000", "--eval-episodes", "200", "--no-progress",
                               "--logdir", str(tmp_path), "--run-name", "ur"])
    assert code == 0 and s["status"] == "finished", s
    assert s["final_success_rate"] >= 0.9, s
    assert s["policy_lag_mean"] > 0 and np.isfinite(s["sps"])
