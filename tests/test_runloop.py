"""agents/runloop.py: the bookkeeping both learners share around their updates (counters, learning
rate, logging, checkpoints, statuses, signals), on a stand-in update; then Ctrl-C / SIGTERM and
divergence in each learner."""

import os
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs
from agents import checkpoint as ckpt
from agents import impala, ppo
from agents.actor import make_actor_policy
from agents.config import TrainConfig
from agents.runloop import NonFiniteLossError, RunLoop, StopFlag
from policies.actor_critic import ActorCritic

CPU = torch.device("cpu")
# 8 steps per update, 5 updates
CFG = {"env_kwargs": {"length": 3}, "core": "gru", "num_envs": 2, "num_steps": 4, "seq_len": 4,
       "num_minibatches": 1, "hidden_size": 8, "embed_size": 8, "total_steps": 40,
       "eval_episodes": 0, "progress": False, "device": "cpu", "save_every": 2}


class Boom(RuntimeError):
    pass


def make_env_and_policy(cfg: TrainConfig, num_envs: int):
    venv = envs.make(cfg.env, num_envs, cfg.seed, **cfg.env_kwargs)
    return venv, make_actor_policy(cfg, venv)  # the actor-critic the config describes


def make_run(tmp_path, stop=None, **kw) -> RunLoop:
    cfg = TrainConfig(**{**CFG, **kw})
    venv, policy = make_env_and_policy(cfg, 1)
    venv.close()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    return RunLoop(cfg, policy, optimizer, str(tmp_path), CPU, stop=stop, algo="test",
                   event_log="events.log", failures=(Boom,))


def loop(run: RunLoop, raise_at: dict[int, Exception] | None = None, leave_at: int | None = None):
    """A learner whose update does nothing: counts the steps, times a 'wait', reports a loss."""
    with run:
        while run.next_update():
            if run.update + 1 == leave_at:
                break
            with run.timing("wait"):
                pass
            if raise_at and run.update + 1 in raise_at:
                raise raise_at[run.update + 1]
            run.collected(run.cfg.batch_size)
            run.end_update({"policy_loss": torch.tensor(0.5)})


def test_counts_anneals_logs_and_finishes(tmp_path):
    run = make_run(tmp_path)
    lrs = []
    with run:
        while run.next_update():
            lrs.append(run.optimizer.param_groups[0]["lr"])
            with run.timing("wait"):
                pass
            run.collected(8)
            run.end_update({"policy_loss": torch.tensor(0.5)})
    s = run.finish(extra={"mine": 1})
    assert s["status"] == "finished" and s["updates"] == 5 and s["total_steps"] == 40
    assert s["algo"] == "test" and s["mine"] == 1 and set(s["perf_s"]) == {"env", "inference",
                                                                         "learn", "wait"}
    lr = run.cfg.learning_rate
    assert lrs == pytest.approx([lr * (1 - u / 5) for u in range(5)])
    assert ckpt.load(str(tmp_path))["update"] == 5
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"losses/policy_loss", "perf/wait_s", "perf/learn_s", "charts/SPS"} <= tags
    assert [e.step for e in ea.Scalars("perf/wait_s")] == [8, 16, 24, 32, 40]


def test_stop_callback_interrupts_after_that_update_and_saves(tmp_path):
    asked = []
    run = make_run(tmp_path, stop=lambda update: asked.append(update) or update == 3)
    loop(run)
    s = run.finish()
    assert asked == [1, 2, 3] and s["status"] == "interrupted" and s["updates"] == 3
    assert ckpt.load(str(tmp_path))["update"] == 3


def test_leaving_the_loop_early_is_an_interruption(tmp_path):
    run = make_run(tmp_path)
    loop(run, leave_at=2)
    assert run.finish()["status"] == "interrupted" and ckpt.load(str(tmp_path))["update"] == 1


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    run = make_run(tmp_path)
    loop(run, raise_at={4: NonFiniteLossError("loss became nan")})
    s = run.finish()
    assert s["status"] == "diverged: loss became nan" and s["updates"] == 3
    assert ckpt.load(str(tmp_path))["update"] == 2  # --save-every 2: not the end of update 3


def test_a_named_failure_ends_the_run_reported_and_saved(tmp_path):
    run = make_run(tmp_path)
    loop(run, raise_at={2: Boom("actor 0 died 3 times")})
    s = run.finish()
    assert s["status"] == "failed: actor 0 died 3 times" and s["updates"] == 1
    assert ckpt.load(str(tmp_path))["update"] == 1
    assert "step 8: failed: actor 0 died 3 times" in (tmp_path / "events.log").read_text()


def test_other_exceptions_propagate_and_the_signal_handlers_come_back(tmp_path):
    before = {s: signal.getsignal(s) for s in StopFlag.SIGNALS}
    run = make_run(tmp_path)
    with pytest.raises(ValueError, match="a bug"):
        loop(run, raise_at={2: ValueError("a bug")})
    assert {s: signal.getsignal(s) for s in StopFlag.SIGNALS} == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_to_stop_the_second_aborts(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt), StopFlag() as flag:
        os.kill(os.getpid(), sig)
        assert flag.set
        os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) == before


# ---------------------------------------------------------------------------------------------
# the learners
# ---------------------------------------------------------------------------------------------

LEARNERS = {
    "ppo": {"num_envs": 4, "num_steps": 8, "seq_len": 4, "num_minibatches": 2, "update_epochs": 2},
    "impala": {"algo": "impala", "num_envs": 4, "num_actors": 2, "unroll_length": 8,
               "learner_batch": 2},
}


def train_with(tmp_path, algo: str, on_progress, **kw) -> dict:
    cfg = TrainConfig(**{**CFG, **LEARNERS[algo], "total_steps": 320, "save_every": 1, **kw})
    venv, policy = make_env_and_policy(cfg, 1 if algo == "impala" else cfg.num_envs)
    learner = impala.train if algo == "impala" else ppo.train
    try:
        return learner(cfg, venv, policy, str(tmp_path), CPU, on_progress=on_progress)
    finally:
        venv.close()


@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_sigterm_stops_either_learner_after_the_update_and_saves(tmp_path, algo):
    def on_progress(p):
        if p["update"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    s = train_with(tmp_path, algo, on_progress)
    assert s["status"] == "interrupted" and s["updates"] == 2 and s["total_steps"] == 64
    assert ckpt.load(str(tmp_path))["update"] == 2


@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_either_learner_diverges_with_the_last_good_checkpoint(tmp_path, monkeypatch, algo):
    evaluate, poisoned = ActorCritic.evaluate, []

    def nan_values(self, *args, **kwargs):  # the learner's forward pass (actors act with act())
        out = evaluate(self, *args, **kwargs)
        return out._replace(value=out.value * float("nan")) if poisoned else out

    monkeypatch.setattr(ActorCritic, "evaluate", nan_values)
    s = train_with(tmp_path, algo, lambda p: p["update"] == 2 and poisoned.append(True))
    assert s["status"].startswith("diverged: loss became nan"), s["status"]
    assert s["updates"] == 2 and s["checkpoint"] == ckpt.path(str(tmp_path))
    data = ckpt.load(str(tmp_path))
    assert data["update"] == 2
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())
