"""The command line: one real `python train.py` subprocess, eval and GIF, bad flags and corrupt
checkpoints (exit code 2, one line), help text; plus the slow learning checks."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from agents import commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8", "--seq-len", "8",
        "--num-minibatches", "2", "--update-epochs", "1", "--hidden-size", "16", "--embed-size", "16",
        "--no-progress", "--device", "cpu"]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_real_subprocess_run_then_eval_with_gif(tmp_path):
    p = cli(*TINY, "--total-steps", "64", "--eval-episodes", "4", "--logdir", str(tmp_path), "--run-name", "r")
    assert p.returncode == 0, p.stderr
    run_dir = tmp_path / "r"
    assert f"tensorboard --logdir {run_dir}" in p.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_steps"] == 64 and summary["status"] == "finished"
    assert json.loads((run_dir / "config.json").read_text())["env_kwargs"] == {"length": 3}
    gif = tmp_path / "episode.gif"
    e = cli("eval", "--checkpoint", str(run_dir), "--episodes", "6", "--video", str(gif), "--json")
    assert e.returncode == 0, e.stderr
    result = json.loads(e.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 6 and 0.0 <= result["success_rate"] <= 1.0
    assert gif.stat().st_size > 0 and result["video"]["frames"] >= 2


def test_bad_flag_in_a_subprocess_is_one_line_and_exit_code_2():
    p = cli("--num-steps", "100", "--seq-len", "30")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --num-steps (100) must be a multiple of --seq-len")
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("argv,message", [
    (["--core", "nope"], "unknown core 'nope'"),
    (["--core", "stack:0"], "invalid core 'stack:0': the frame-stack core is stack:K with K an integer >= 1"),
    (["--env", "NoSuchEnv-v0"], "unknown environment id"),
    (["--hidden-size", "-3"], "--hidden-size must be a positive integer"),
    (["--num-envs", "0"], "--num-envs must be a positive integer"),
    (["--num-minibatches", "3"], "--num-minibatches (3) must divide"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    (["--policy-head-gain", "0"], "--policy-head-gain must be positive"),
    (["--total-steps", "0"], "--total-steps must be positive"),
    (["--learning-rate", "abc"], "--learning-rate: could not convert string to float"),
    (["--bogus"], "Unrecognized options: --bogus"),
    (["--env-kwargs", "length"], "key=value"),
    (["--env-kwargs", "lenght=5"], "unexpected kwargs"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--algo", "impala", "--learner-epochs", "0"], "--learner-epochs must be a positive integer"),
    (["--algo", "impala", "--learner-minibatches", "3"], "--learner-minibatches (3) must divide"),
    (["--algo", "impala", "--pg-loss", "ppo"], "--pg-loss must be vtrace or clipped"),
    (["--algo", "impala", "--learner-minibatches", "4", "--num-envs", "2"], "(4) must divide"),
    (["--num-envs", "2", "--num-minibatches", "4"], "--num-minibatches (4) must divide"),
    (["eval"], "--checkpoint"),
    (["eval", "--checkpoint", "/nonexistent/run"], "no checkpoint at"),
])
def test_bad_input_gives_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    code = train.main([*argv, "--logdir", str(tmp_path)] if argv[0] != "eval" else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not os.listdir(tmp_path), "nothing is written for bad input"


@pytest.mark.parametrize("content", [b"garbage", b"", "foreign"])
def test_corrupt_or_foreign_checkpoint_exit_code_2(content, tmp_path, capsys):
    f = tmp_path / "checkpoint.pt"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, f)
    else:
        f.write_bytes(content)
    for argv in (["eval", "--checkpoint", str(f)], ["--resume", str(f)]):
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "checkpoint" in err[0]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    from dataclasses import fields

    from agents.config import RESUMABLE_OVERRIDES, TrainConfig
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    # every field has a docstring, which is its help; --resume's help is written from the list
    assert "Adam learning rate." in text and "Discount factor." in text
    resume_help = text[text.index("--resume"):]
    assert all("--" + k.replace("_", "-") in resume_help[:600] for k in RESUMABLE_OVERRIDES)


def test_flags_round_trip_into_the_config():
    cfg, supplied, _ = train.parse_train(["--core", "gru", "--env-kwargs", "length=7", "name='x'",
                                          "--no-anneal-lr", "--target-kl", "0.02", "--seq-len", "41",
                                          "--num-steps", "82"])
    assert cfg.core == "gru" and cfg.env_kwargs == {"length": 7, "name": "x"} and cfg.anneal_lr is False
    assert cfg.target_kl == 0.02 and cfg.seq_len == 41 and cfg.num_steps == 82
    assert "seq_len" not in supplied and supplied["gamma"] == 0.99  # the preset fills what is not typed
    assert train.parse_train(["--target-kl", "none"])[0].target_kl is None
    assert train.parse_train(["--target-kl", "None"])[0].target_kl is None
    assert train.parse_train(["--env-kwargs"])[0].env_kwargs == {}
    # without a preset no kwargs: the environment's own defaults
    assert train.parse_train(["--env", "MiniGrid-MemoryS7-v0", "--preset", "none"])[0].env_kwargs == {}
    assert train.parse_train(["--env", "urlstm/TMazePassive-v0"])[0].env_kwargs == {"length": 50}
    cfg = train.parse_train(["--env", "urlstm/MemoryChain-v0", "--policy-head-gain", "1.0", "--preset", "none"])[0]
    assert cfg.env_kwargs == {} and cfg.policy_head_gain == 1.0
    venv = commands.make_env(cfg, num_envs=1)
    head = commands.make_policy(cfg, venv, torch.device("cpu")).head.linear.weight
    assert torch.allclose(torch.linalg.svdvals(head), torch.ones(2))  # orthogonal, gain 1


def test_impala_defaults_on_the_command_line_and_in_python_agree():
    """--algo impala without --num-envs / --total-steps: 4 envs per actor, 2M steps; explicit values
    are kept; TrainConfig(algo="impala") gets the same."""
    from agents.config import TrainConfig

    cfg = train.parse_train(["--algo", "impala", "--preset", "none"])[0]
    assert (cfg.num_envs, cfg.learner_batch, cfg.batch_size) == (8, 1, 4 * cfg.unroll_length)
    assert cfg.total_steps == 2_000_000 and train.parse_train([])[0].total_steps == 1_000_000
    assert cfg == TrainConfig(algo="impala", preset="none")
    assert train.parse_train(["--algo", "impala", "--num-actors", "3"])[0].num_envs == 12
    assert TrainConfig(algo="impala", num_actors=3).num_envs == 12
    assert train.parse_train(["--algo", "impala", "--num-envs", "6"])[0].num_envs == 6
    assert train.parse_train([])[0].num_envs == 32 and TrainConfig().num_envs == 32


def test_the_minibatch_counts_default_to_the_largest_divisor_that_fits():
    """A default never makes a plain combination of other flags invalid: the preset's APPO
    minibatches (4) shrink to what one unroll per actor allows; an explicit bad value still errors."""
    from agents.config import ConfigError, TrainConfig

    argv = ["--algo", "impala", "--env", "MiniGrid-MemoryS9-v0", "--num-actors", "2", "--num-envs", "2"]
    cfg = train.parse_train(argv).cfg
    assert cfg.pg_loss == "clipped" and cfg.learner_minibatches == 1
    assert train.parse_train(argv[:-1] + ["8"]).cfg.learner_minibatches == 4
    assert train.parse_train(argv[:-1] + ["6"]).cfg.learner_minibatches == 3
    assert TrainConfig(algo="impala").learner_minibatches == 1  # vtrace: the paper's one step
    assert TrainConfig(num_envs=6, num_steps=10, seq_len=10).num_minibatches == 3
    assert TrainConfig(num_envs=2, num_steps=10, seq_len=10).num_minibatches == 2
    with pytest.raises(ConfigError, match="must divide"):
        train.parse_train([*argv, "--learner-minibatches", "4"])


# ---------------------------------------------------------------------------------------------
# slow learning checks (pytest -m slow)
# ---------------------------------------------------------------------------------------------

SLOW_TMAZE = ["--env-kwargs", "length=20", "--num-steps", "42", "--seq-len", "42", "--total-steps", "300000",
              "--eval-episodes", "200", "--no-progress"]


@pytest.mark.slow
def test_urlstm_learns_the_tmaze_and_mlp_does_not(tmp_path):
    _, ur = train.run_train([*SLOW_TMAZE, "--core", "urlstm", "--logdir", str(tmp_path), "--run-name", "ur"])
    _, mlp = train.run_train([*SLOW_TMAZE, "--core", "mlp", "--logdir", str(tmp_path), "--run-name", "mlp"])
    assert ur["final_success_rate"] >= 0.95, ur
    assert mlp["final_success_rate"] <= 0.65, mlp


def test_end_of_run_hint_names_the_launcher(monkeypatch):
    s = {"status": "finished", "wall_time_s": 61.0, "total_steps": 4096, "sps": 67.0, "train_return": 0.5,
         "train_success_rate": None, "final_eval_episodes": 0, "best_success_rate": None,
         "run_dir": "runs/x", "checkpoint": "runs/x/checkpoint.pt"}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "(continue: python train.py --resume runs/x --total-steps N;" in commands.training_report(s)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "(continue: torchrun <the same options> train.py --resume runs/x --total-steps N;" in commands.training_report(s)


def test_tf32_sets_the_float32_matmul_precision_on_cuda_only(capsys):
    import torch

    import train
    from agents import commands
    from agents.config import TrainConfig

    before = torch.get_float32_matmul_precision()
    try:
        commands.torch_settings(TrainConfig(tf32=True, torch_threads=0), torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high"
        commands.torch_settings(TrainConfig(torch_threads=0), torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "highest"
        torch.set_float32_matmul_precision("medium")
        commands.torch_settings(TrainConfig(torch_threads=0), torch.device("cpu"))  # CPU: left alone
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert train.main(["--tf32", "--device", "cpu"]) == 2
    assert "--tf32 is for CUDA" in capsys.readouterr().err
