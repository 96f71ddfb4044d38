"""PPO in-process: smoke runs of every core family, truncation bootstrap, resume equality,
reproducibility, NaN handling. Tiny budgets (seconds)."""

import json
import os

import pytest
import torch

import train
from agents import checkpoint as ckpt
from agents import commands, ppo
from agents.config import TrainConfig
from agents.rollout import EpisodeStats, Rollout, Timers, collect, initial_carry
from agents.runfolder import UsageError
from policies.actor_critic import ActorCritic

TINY = ["--env", "urlstm/TMazePassive-v0", "--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8",
        "--seq-len", "4", "--num-minibatches", "2", "--update-epochs", "2", "--hidden-size", "16",
        "--embed-size", "16", "--eval-episodes", "4", "--no-progress", "--device", "cpu"]


def run(tmp_path, *flags, name="run", stop=None):
    code, summary = train.run_train([*TINY, "--logdir", str(tmp_path), "--run-name", name, *flags], stop=stop)
    return code, summary


@pytest.mark.parametrize("core", ["lstm", "gru", "urlstm", "urgru", "lstm:CR", "gru:O-", "mlp", "stack:4"])
def test_every_core_family_trains(tmp_path, core):
    code, s = run(tmp_path, "--core", core, "--total-steps", "64")
    assert code == 0 and s["status"] == "finished"
    assert s["total_steps"] == 64 and s["updates"] == 2
    run_dir = s["run_dir"]
    for f in ("config.json", "summary.json", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(run_dir, f))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    for key in ("env", "core", "algo", "seed", "total_steps", "wall_time_s", "sps", "final_success_rate",
                "final_return", "best_success_rate"):
        assert key in summary
    assert summary["core"] == core and summary["algo"] == "ppo"
    assert 0.0 <= summary["final_success_rate"] <= 1.0
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["core"] == core and "git_commit" in config


def test_tensorboard_has_the_fixed_prefixes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, s = run(tmp_path, "--core", "urlstm", "--total-steps", "64", "--env-kwargs", "length=2")
    ea = EventAccumulator(s["run_dir"])
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/success_rate", "charts/SPS",
                "losses/value_loss", "losses/policy_loss", "losses/entropy", "perf/env_s",
                "perf/inference_s", "perf/learn_s", "memory/gate_mean", "memory/timescale_mean"):
        assert tag in scalars, tag
    assert {"memory/gate", "memory/log10_timescale"} <= set(ea.Tags()["histograms"])
    assert all(t.split("/")[0] in ("charts", "losses", "perf", "memory") for t in scalars)


def test_dict_observations_and_truncation(tmp_path):
    """MiniGrid (Dict obs with an image) in sync mode with a short time limit, so episodes truncate."""
    code, s = run(tmp_path, "--env", "MiniGrid-MemoryS7-v0", "--env-kwargs", "max_steps=5",
                  "vectorization='sync'", "--core", "gru", "--total-steps", "64")
    assert code == 0 and s["final_return"] is not None


@pytest.mark.parametrize("core", ["gru", "stack:3"])
def test_truncation_bootstraps_from_final_obs_with_current_state(core):
    """final_values[t] == V(final obs) computed from the memory after step t (recomputed here from
    the state the rollout stored)."""
    cfg = TrainConfig(env="CartPole-v1", env_kwargs={"max_episode_steps": 5, "vectorization": "sync"},
                      core=core, num_envs=3, num_steps=12, seq_len=12, num_minibatches=1, hidden_size=8,
                      embed_size=8, progress=False)
    torch.manual_seed(0)
    venv = commands.make_env(cfg)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    ro = Rollout.zeros(policy, cfg.num_steps, cfg.num_envs, cfg.seq_len, torch.device("cpu"))
    carry = initial_carry(policy, venv, cfg.seed, torch.device("cpu"))
    finals = {}
    orig_step = venv.step

    def step(actions):
        out = orig_step(actions)
        info = out[4]
        if "_final_obs" in info:
            for b in range(cfg.num_envs):
                if info["_final_obs"][b]:
                    finals[(step.t, b)] = info["final_obs"][b]
        step.t += 1
        return out
    step.t = 0
    venv.step = step
    collect(policy, venv, ro, carry, EpisodeStats(), Timers())
    venv.close()
    cut = ro.truncated & ~ro.terminated
    assert cut.any(), "the time limit should truncate some episodes"
    with torch.no_grad():
        x = policy._inputs(ro.obs, ro.reset, ro.prev_action, ro.prev_reward, (12, 3))
        for t, b in cut.nonzero().tolist():
            state = tuple(s[0][:, b:b + 1] for s in ro.states)  # state before step 0
            _, state = policy.core(x[:t + 1, b:b + 1], state, ro.reset[:t + 1, b:b + 1])
            final = torch.as_tensor(finals[(t, b)], dtype=torch.float32).unsqueeze(0)
            v = policy.value(final, state, torch.zeros(1, dtype=torch.bool), ro.actions[t, b:b + 1],
                             ro.rewards[t, b:b + 1])
            torch.testing.assert_close(ro.final_values[t, b], v[0])
    assert torch.all(ro.final_values[cut] != 0)


def _params(run_dir):
    return ckpt.load(run_dir)["model"]


@pytest.mark.parametrize("extra", [[], ["--norm-reward"]], ids=["plain", "norm-reward"])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, extra):
    flags = ["--core", "urlstm", "--total-steps", "160", "--eval-episodes", "0", *extra]
    code, full = run(tmp_path, *flags, name="full")
    assert code == 0 and full["updates"] == 5
    code, part = run(tmp_path, *flags, name="part", stop=lambda update: update == 2)
    assert code == 0 and part["status"] == "interrupted" and part["updates"] == 2
    assert ckpt.load(part["run_dir"])["update"] == 2
    code, resumed = train.run_train(["--resume", part["run_dir"], "--no-progress"])
    assert code == 0 and resumed["status"] == "finished" and resumed["updates"] == 5
    a, b = _params(full["run_dir"]), _params(part["run_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["train_return"] == full["train_return"]


def test_resume_rejects_changed_settings_and_finished_runs(tmp_path):
    code, s = run(tmp_path, "--total-steps", "32", "--eval-episodes", "0")
    with pytest.raises(UsageError, match="--hidden-size cannot change"):
        train.run_train(["--resume", s["run_dir"], "--hidden-size", "32"])
    with pytest.raises(UsageError, match="raise --total-steps"):
        train.run_train(["--resume", s["run_dir"]])
    code, more = train.run_train(["--resume", s["run_dir"], "--total-steps", "64", "--no-progress"])
    assert code == 0 and more["total_steps"] == 64


def test_same_seed_same_metrics(tmp_path):
    keys = ("total_steps", "final_success_rate", "final_return", "best_success_rate", "train_return",
            "train_success_rate")
    _, a = run(tmp_path, "--total-steps", "96", "--seed", "3", name="a")
    _, b = run(tmp_path, "--total-steps", "96", "--seed", "3", name="b")
    _, c = run(tmp_path, "--total-steps", "96", "--seed", "4", name="c")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    pa, pb, pc = _params(a["run_dir"]), _params(b["run_dir"]), _params(c["run_dir"])
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    evaluate = ActorCritic.evaluate

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = evaluate(self, *args, **kwargs)
        if calls["n"] > 4:  # 2 epochs x 2 minibatches = the first update is clean
            out = out._replace(value=out.value * float("nan"))
        return out

    monkeypatch.setattr(ActorCritic, "evaluate", poisoned)
    code, s = run(tmp_path, "--total-steps", "96", "--save-every", "1")
    assert code == 1 and s["status"].startswith("diverged")
    assert "error: training stopped" in capsys.readouterr().out
    data = ckpt.load(s["run_dir"])
    assert data["update"] == 1
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())


def test_checkpoint_load_errors(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="not a readable urlstm checkpoint"):
        ckpt.load(str(bad))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a urlstm PPO checkpoint"):
        ckpt.load(str(foreign))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load(str(tmp_path / "missing"))
    code, s = run(tmp_path, "--total-steps", "32", "--eval-episodes", "0")
    data = open(s["checkpoint"], "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(str(truncated))
    # nothing but the checkpoint itself is in the run folder (the temp file was renamed)
    assert not [f for f in os.listdir(s["run_dir"]) if f.endswith(".tmp")]


def test_sequence_layout_round_trip():
    x = torch.arange(2 * 6 * 3).reshape(6, 3, 2)  # [T=6, B=3, 2]
    y = ppo._to_sequences(x, 2)                    # [2, 9, 2]: column k*B + b = steps 2k, 2k+1 of env b
    assert y.shape == (2, 9, 2)
    for k in range(3):
        for b in range(3):
            assert torch.equal(y[:, k * 3 + b], x[2 * k:2 * k + 2, b])
