"""Run folders shared with train.py's conventions: TensorBoard scalars under fixed prefixes
(``losses/``, ``charts/``, ``memory/``, ``perf/``), ``config.json`` (with the git commit),
``summary.json``, plus ``curve.csv`` (the logged learning curve, for tables and plots)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import time
from typing import Any

import torch

PREFIXES = ("charts/", "losses/", "perf/", "memory/")
CURVE_FIELDS = ("step", "time_s", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "gate_mean")


def write_json(file: str, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    tmp = f"{file}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, file)


def git_commit() -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def make_run_dir(logdir: str, label: str, core: str, seed: int, run_name: str | None = None) -> str:
    """Create ``logdir/<label>__<core>__s<seed>__<YYYYmmdd-HHMMSS>`` (or ``logdir/run_name``); never reuse one."""
    if run_name is None:
        safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "x"  # noqa: E731  lstm:-- -> lstm_--
        run_name = f"{safe(label)}__{safe(core)}__s{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(logdir, run_name)
    base, n = run_dir, 1
    while os.path.exists(run_dir):
        n += 1
        run_dir = f"{base}-{n}"
    os.makedirs(run_dir)
    return run_dir


class RunLog:
    """TensorBoard writer restricted to the shared prefixes, and the run's learning-curve CSV."""

    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.writer = SummaryWriter(run_dir, flush_secs=30)
        self._curve = open(os.path.join(run_dir, "curve.csv"), "w", newline="")
        self._csv = csv.DictWriter(self._curve, CURVE_FIELDS)
        self._csv.writeheader()

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        assert tag.startswith(PREFIXES), tag
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        assert tag.startswith(PREFIXES), tag
        values = values.detach().float().cpu()
        values = values[torch.isfinite(values)]
        if values.numel():
            self.writer.add_histogram(tag, values, step)

    def curve(self, **row: float | int | None) -> None:
        """One row of curve.csv (missing fields stay empty)."""
        self._csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in CURVE_FIELDS})
        self._curve.flush()

    def close(self) -> None:
        self.writer.close()
        self._curve.close()


def read_curve(run_dir: str) -> list[dict[str, float | None]]:
    """curve.csv of a run folder as a list of rows (empty cells are None)."""
    with open(os.path.join(run_dir, "curve.csv"), newline="") as f:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
