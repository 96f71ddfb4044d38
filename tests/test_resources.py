"""Runs that cannot fit or cannot write stop at once with one line and exit code 2, and a checkpoint
that cannot be written (a full disk) leaves the previous one intact."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import train
from agents import checkpoint as ckpt
from agents import commands, resources

TINY = ["--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8", "--seq-len", "8",
        "--num-minibatches", "2", "--update-epochs", "1", "--hidden-size", "16", "--embed-size", "16",
        "--no-progress", "--device", "cpu", "--eval-episodes", "0", "--preset", "none"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_run_that_cannot_fit_in_memory_stops_before_it_starts(tmp_path, capsys):
    argv = ["--num-envs", "100000", "--num-steps", "100000", "--seq-len", "100000", "--total-steps", "10000000000",
            "--logdir", str(tmp_path)]
    assert train.main(argv) == 2
    line = one_error_line(capsys)
    assert "this configuration needs about" in line and "is free" in line and "rollout storage" in line
    assert not os.listdir(tmp_path), "nothing is written"


@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_the_estimate_is_compared_with_the_free_memory(algo, tmp_path, capsys, monkeypatch):
    """The same config passes with plenty free and is refused, naming its parts, with too little."""
    argv = [*TINY, "--algo", algo, "--logdir", str(tmp_path), "--total-steps", "32"]
    if algo == "impala":
        argv += ["--num-actors", "2", "--unroll-length", "8"]
    cfg = train.parse_train(argv).cfg
    venv = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    spaces = venv.single_observation_space, venv.single_action_space
    venv.close()
    need = sum(resources.training_bytes(cfg, *spaces).values())
    params = sum(p.numel() for p in policy.parameters())
    assert need >= 16 * params  # weights, gradients and Adam's two moments at least
    resources.check_training_memory(cfg, *spaces, torch.device("cpu"), free_host=need + 1)
    with pytest.raises(resources.ResourceError, match=r"needs about .* model and optimizer .* is free"):
        resources.check_training_memory(cfg, *spaces, torch.device("cpu"), free_host=need - 1)
    monkeypatch.setattr(resources, "free_memory", lambda device: need // 2)
    assert train.main(argv) == 2
    assert "this configuration needs about" in one_error_line(capsys)
    assert not os.listdir(tmp_path)


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert train.main([*TINY, "--logdir", str(blocker / "runs")]) == 2
    line = one_error_line(capsys)
    assert "cannot write the run folder" in line and "Not a directory" in line


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert train.main([*TINY, "--logdir", str(folder)]) == 2
        assert "cannot write the run folder" in one_error_line(capsys)
    finally:
        folder.chmod(0o700)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """The second checkpoint write fails half-way (ENOSPC): one line, exit code 2, and the first
    checkpoint is still there, whole, and resumable."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)
    argv = [*TINY, "--total-steps", "96", "--save-every", "1", "--logdir", str(tmp_path), "--run-name", "r"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the run's first line (its preset), then the error
    assert [e for e in err if e.startswith("error: ")] == err[-1:] and "Traceback" not in "".join(err), err
    line = err[-1]
    assert "could not write the checkpoint" in line and "No space left on device" in line
    assert "previous checkpoint" in line and "is intact" in line
    run = tmp_path / "r"
    assert [p.name for p in run.iterdir() if p.name.startswith(".checkpoint.")] == [], "no temp file is left"
    data = ckpt.load(str(run))
    assert data["update"] == 1 and data["global_step"] == 32
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert train.main(["--resume", str(run), "--no-progress"]) == 0
    assert ckpt.load(str(run))["global_step"] == 96


@pytest.mark.parametrize("core", ["urlstm", "lstm", "gru", "lstm:CR", "mlp", "stack:4"])
@pytest.mark.parametrize("env", ["urlstm/TMazePassive-v0", "MiniGrid-MemoryS7-v0"])
def test_the_counted_model_size_bounds_the_built_one(core, env):
    """The parameters counted without building the model are at least those of the built model,
    and, for the recurrent cores, at most 1.4 times as many (LSTM-sized gates where a GRU has
    three; the memoryless core is far smaller than the count)."""
    cfg = train.parse_train(["--env", env, "--core", core, "--hidden-size", "24", "--embed-size",
                             "20", "--num-layers", "2"]).cfg
    venv = commands.make_env(cfg, num_envs=1)
    built = commands.make_policy(cfg, venv, torch.device("cpu"))
    counted, state = resources.model_size(cfg, venv.single_observation_space,
                                          venv.single_action_space)
    venv.close()
    params = sum(p.numel() for p in built.parameters())
    recurrent = core not in ("mlp", "stack:4")  # the memoryless cores are far smaller than the count
    assert params <= counted <= (1.4 * params if recurrent else counted), (params, counted)
    assert state >= sum(s[:, 0].numel() for s in built.initial_state(1, "cpu"))


@pytest.mark.parametrize("flag,value", [("--hidden-size", "100000000"), ("--num-layers", "10000"),
                                        ("--embed-size", str(10**8)), ("--core", "stack:100000000")])
def test_a_model_too_large_to_allocate_is_refused_before_it_is_built(flag, value, tmp_path, capsys,
                                                                     monkeypatch):
    """The model's size is in the estimate, checked before the model is built: building it is made
    to fail here, so a refusal proves the check came first."""
    def never(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(commands, "make_policy", never)
    assert train.main([flag, value, "--total-steps", "64", "--logdir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "this configuration needs about" in line and "model and optimizer" in line
    assert not os.listdir(tmp_path)
