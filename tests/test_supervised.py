"""supervised/: data generators, data-file readers, missing-data message, tiny runs of every task, the grid."""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from supervised.__main__ import main
from supervised.adding import AddingTask, adding_batch
from supervised.config import Config, ConfigError
from supervised.copy_task import BLANK, CUE, CopyTask, copy_batch
from supervised.datasets import (
    BadData,
    MissingData,
    load_cifar10,
    load_digits,
    load_mnist,
    read_idx,
)
from supervised.grid import GridConfig, find_runs, run_grid
from supervised.pixels import PixelsTask, pixel_permutation
from supervised.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(steps=3, hidden_size=8, log_every=1, eval_every=2, eval_size=20, progress=False)


# --- data generators ---------------------------------------------------------------------------

def test_copy_batch_layout_and_targets():
    symbols, tokens = copy_batch(4, 7, torch.Generator().manual_seed(0))
    assert symbols.shape == (27, 4) and tokens.shape == (10, 4)  # T = lag + 20
    assert torch.equal(symbols[:10], tokens) and int(tokens.max()) < 8
    assert (symbols[10:16] == BLANK).all() and (symbols[16] == CUE).all() and (symbols[17:] == BLANK).all()
    x, target = CopyTask(4, 7, seed=0, eval_size=5).train_batch()
    assert x.shape == (27, 4, 10) and torch.equal(x.argmax(-1)[:10], target)


def test_copy_determinism_and_heldout():
    a, b, c = (CopyTask(3, 5, seed=s, eval_size=6) for s in (1, 1, 2))
    assert torch.equal(a.train_batch()[1], b.train_batch()[1])
    assert not torch.equal(a.train_batch()[1], c.train_batch()[1])
    assert torch.equal(a.eval_set[1], b.eval_set[1]) and not torch.equal(a.eval_set[1], c.eval_set[1])
    assert not torch.equal(a.eval_set[1][:, :3], CopyTask(3, 5, seed=1, eval_size=6).train_batch()[1])


def test_copy_baseline_is_log8():
    loss, correct, n = CopyTask.score(torch.zeros(10, 5, 8), torch.zeros(10, 5, dtype=torch.long))
    assert math.isclose(loss.item(), math.log(8), rel_tol=1e-6) and n == 50 and CopyTask.baseline_loss == math.log(8)


def test_adding_batch_targets():
    x, target = adding_batch(64, 11, torch.Generator().manual_seed(3))
    assert x.shape == (11, 64, 2) and target.shape == (64,)
    marker = x[..., 1]
    assert (marker.sum(0) == 2).all()
    assert (marker[:5].sum(0) == 1).all() and (marker[5:].sum(0) == 1).all()  # one marker per half
    torch.testing.assert_close((x[..., 0] * marker).sum(0), target)
    x2, target2 = adding_batch(64, 11, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(target, target2)


def test_adding_baseline_close_to_one_sixth():
    x, target = adding_batch(20000, 10, torch.Generator().manual_seed(0))
    assert abs(((target - 1) ** 2).mean().item() - AddingTask.baseline_loss) < 0.01


def test_digits_split_and_permutation():
    data = load_digits()
    assert data.train_x.shape == (1437, 64, 1) and data.test_x.shape == (360, 64, 1)
    assert np.array_equal(load_digits().test_y, data.test_y)
    plain = PixelsTask(data, batch_size=5, seed=0, eval_size=1000)
    perm = PixelsTask(data, batch_size=5, seed=0, eval_size=1000, permute=True, permute_seed=4)
    order = pixel_permutation(64, 4)
    assert torch.equal(order, pixel_permutation(64, 4)) and not torch.equal(order, pixel_permutation(64, 5))
    assert sorted(order.tolist()) == list(range(64))
    torch.testing.assert_close(perm.test_x, plain.test_x[:, order])
    x, y = plain.train_batch()
    assert x.shape == (64, 5, 1) and y.shape == (5,)
    x2, y2 = PixelsTask(data, batch_size=5, seed=0, eval_size=1000).train_batch()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert sum(len(t) for _, t in plain.eval_batches()) == 360
    # one epoch (the batch above and the rest) covers every training image once
    epoch = torch.cat([y] + [plain.train_batch()[1] for _ in range(math.ceil(1437 / 5) - 1)])
    assert torch.equal(torch.bincount(epoch, minlength=10), torch.bincount(plain.train_y, minlength=10))
    assert not plain._epoch


# --- readers on tiny files ----------------------------------------------------------------------

def _write_idx(path: str, array: np.ndarray) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(str(tmp_path / "a-idx3-ubyte"), a)
    _write_idx(str(tmp_path / "b.gz"), np.array([1, -7, 300], dtype=np.int32))
    assert np.array_equal(read_idx(str(tmp_path / "a-idx3-ubyte")), a)
    assert read_idx(str(tmp_path / "b.gz")).tolist() == [1, -7, 300]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(BadData, match="magic"):
        read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(BadData, match="shape"):
        read_idx(str(tmp_path / "short"))


def _tiny_mnist(folder, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", n_train, ".gz"), ("t10k", n_test, "")):
        _write_idx(str(folder / f"{prefix}-images-idx3-ubyte{gz}"), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(str(folder / f"{prefix}-labels-idx1-ubyte{gz}"), rng.integers(0, 10, n, dtype=np.uint8))


def test_load_mnist_tiny(tmp_path):
    _tiny_mnist(tmp_path)
    data = load_mnist(str(tmp_path))
    assert data.train_x.shape == (6, 784, 1) and data.test_x.shape == (4, 784, 1)
    assert np.array_equal(data.train_x[:, :, 0], read_idx(str(tmp_path / "train-images-idx3-ubyte.gz")).reshape(6, -1))
    assert data.test_y.dtype == np.int64


def _tiny_cifar(folder, n=3):
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    return root


def test_load_cifar10_tiny(tmp_path):
    root = _tiny_cifar(tmp_path)
    data = load_cifar10(str(tmp_path))
    assert data.train_x.shape == (15, 1024, 3) and data.test_x.shape == (3, 1024, 3)
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"]
    # pixel 1 of image 0: its red, green, blue values
    assert data.test_x[0, 1].tolist() == [raw[0, 1], raw[0, 1025], raw[0, 2049]]
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(BadData, match="CIFAR"):
        load_cifar10(str(tmp_path))


def test_missing_data_message(tmp_path, capsys):
    with pytest.raises(MissingData, match="t10k-images-idx3-ubyte"):
        load_mnist(str(tmp_path))
    with pytest.raises(MissingData, match="cifar-10-python.tar.gz"):
        load_cifar10(str(tmp_path))
    code = main(["pixels", "--dataset", "mnist", "--data-dir", str(tmp_path), "--logdir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: MNIST not found") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing written before the data is there


# --- runs ---------------------------------------------------------------------------------------

def _check_run(summary, task_label):
    run_dir = summary["run_dir"]
    assert summary["task_label"] == task_label and summary["steps"] == 3 and summary["status"] == "done"
    assert math.isfinite(summary["final_loss"]) and 0 <= summary["final_accuracy"] <= 1
    assert summary["steps_per_s"] > 0
    for name in ("config.json", "summary.json", "curve.csv"):
        assert os.path.isfile(os.path.join(run_dir, name))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["core"] == summary["core"] and "git_commit" in config


@pytest.mark.parametrize("task,options,label", [
    ("copy", dict(lag=5, core="urlstm"), "copy-lag5"),
    ("adding", dict(length=12, core="lstm"), "adding-T12"),
    ("pixels", dict(permute=True, core="urgru"), "pixels-digits-perm"),
    ("pixels", dict(dataset="mnist", core="lstm:OM"), "pixels-mnist"),
    ("pixels", dict(dataset="cifar10", core="gru"), "pixels-cifar10"),
])
def test_tiny_run_of_each_task(tmp_path, task, options, label):
    if options.get("dataset") == "mnist":
        _tiny_mnist(tmp_path, 4, 2)
    if options.get("dataset") == "cifar10":
        _tiny_cifar(tmp_path, 2)
    summary = train(Config(task=task, logdir=str(tmp_path / "runs"), data_dir=str(tmp_path), batch_size=2,
                           **TINY, **options))
    _check_run(summary, label)


def test_time_budget_stops_early(tmp_path):
    s = train(Config(task="copy", lag=3, steps=10**6, time_budget=0.3, logdir=str(tmp_path), **{
        k: v for k, v in TINY.items() if k != "steps"}))
    assert s["status"] == "time budget" and 0 < s["steps"] < 10**6 and s["final_loss"] is not None


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown task"):
        Config(task="sort")
    with pytest.raises(ConfigError, match="unknown core"):
        Config(core="lstm:XX")
    with pytest.raises(ConfigError, match="stack:K with K an integer >= 1"):
        Config(core="stack:-1")
    assert Config(core="stack:4").core == "stack:4"
    with pytest.raises(ConfigError, match="--lag"):
        Config(lag=0)
    assert Config(task="copy").hidden_size == 256 and Config(task="adding").batch_size == 50


def test_cli_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    ok = subprocess.run([sys.executable, "-m", "supervised", "copy", "--steps", "2", "--lag", "3", "--hidden-size", "4",
                         "--logdir", str(tmp_path), "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "done: urlstm on copy-lag3, 2 steps" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "supervised", "adding", "--core", "nope"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown core 'nope'") and bad.stderr.count("\n") == 1


def test_grid_two_cores(tmp_path, capsys):
    base = Config(task="copy", lag=4, logdir=str(tmp_path), batch_size=2, **TINY)
    grid_dir, summaries = run_grid(GridConfig(base, cores=("lstm:--", "urlstm"), seeds=(1, 2)))
    assert [(s["core"], s["seed"]) for s in summaries] == [("lstm:--", 1), ("lstm:--", 2), ("urlstm", 1), ("urlstm", 2)]
    for name in ("grid.md", "grid.csv", "grid.png", "grid.json"):
        assert os.path.isfile(os.path.join(grid_dir, name))
    table = open(os.path.join(grid_dir, "grid.md")).read()
    assert "| `lstm:--` | 2 | 3 |" in table and "| `urlstm` | 2 | 3 |" in table
    assert len(open(os.path.join(grid_dir, "grid.csv")).read().strip().splitlines()) == 5
    assert len(find_runs([grid_dir])) == 4
    assert main(["report", grid_dir, "--out", str(tmp_path / "again" / "table")]) == 0
    assert os.path.isfile(tmp_path / "again" / "table.png")
    with pytest.raises(ConfigError, match="unknown core"):
        GridConfig(base, cores=("lstm", "foo"))


def test_speed_table(capsys):
    assert main(["speed", "--task", "adding", "--length", "6", "--hidden-size", "4", "--cores", "lstm,urlstm",
                 "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "adding-T6: T=6" in out and "| `lstm` |" in out and "| `urlstm` |" in out
    assert main(["speed", "--reps", "0"]) == 2


@pytest.mark.parametrize("command", ["copy", "adding", "pixels", "grid", "speed", "report"])
def test_help_of_every_command_exits_0(command):
    p = subprocess.run([sys.executable, "-m", "supervised", command, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m supervised"), p.stderr


@pytest.mark.parametrize("argv,message", [
    (["copy", "--steps", "x"], "--steps"), (["grid", "--core", "lstm"], "--core is not a flag"),
    (["speed", "--cores", "nope"], "unknown core"), ([], "name a TASK"), (["copy", "--bogus"], "--bogus"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
