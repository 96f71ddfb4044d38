"""Run folders shared with train.py's conventions (one implementation, in ``agents.runfolder``):
TensorBoard scalars under fixed prefixes (``losses/``, ``charts/``, ``memory/``, ``perf/``),
``config.json`` (with the git commit), ``summary.json``, plus ``curve.csv`` (the logged learning
curve, for tables and plots)."""

from __future__ import annotations

import csv
import os

from agents.runfolder import PREFIXES, Writer, git_commit, make_run_dir, write_json

__all__ = ["CURVE_FIELDS", "PREFIXES", "RunLog", "git_commit", "make_run_dir", "read_curve", "write_json"]

CURVE_FIELDS = ("step", "time_s", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "gate_mean")


class RunLog(Writer):
    """The shared TensorBoard writer, and the run's learning-curve CSV."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir)
        self._curve = open(os.path.join(run_dir, "curve.csv"), "w", newline="")
        self._csv = csv.DictWriter(self._curve, CURVE_FIELDS)
        self._csv.writeheader()

    def curve(self, **row: float | int | None) -> None:
        """One row of curve.csv (missing fields stay empty)."""
        self._csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in CURVE_FIELDS})
        self._curve.flush()

    def close(self) -> None:
        super().close()
        self._curve.close()


def read_curve(run_dir: str) -> list[dict[str, float | None]]:
    """curve.csv of a run folder as a list of rows (empty cells are None)."""
    with open(os.path.join(run_dir, "curve.csv"), newline="") as f:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
