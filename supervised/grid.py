"""The gate-grid ablation: one task for a list of cores x seeds, then a table and learning curves.

``run_grid`` trains every (core, seed) pair (optionally ``jobs`` at a time in separate processes,
one torch thread each) into one grid folder; ``write_report`` turns any set of run folders into
``<out>.md`` (mean +- std over seeds per core), ``<out>.csv`` (one row per run) and ``<out>.png``
(training loss and evaluation accuracy versus steps, mean over seeds).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from policies.cores.registry import GRID_CELLS

from .config import Config, ConfigError
from .runlog import make_run_dir, read_curve, write_json

DEFAULT_CORES: tuple[str, ...] = tuple(f"lstm:{cell}" for cell in GRID_CELLS) + ("lstm", "gru", "urgru")


@dataclass(frozen=True)
class GridConfig:
    base: Config
    """the task and every option but core and seed"""
    cores: tuple[str, ...] = DEFAULT_CORES
    """core specs, in table order"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds run for every core"""
    jobs: int = 1
    """runs at a time (separate processes with --threads torch threads each)"""

    def __post_init__(self) -> None:
        from policies.cores import check_core

        if not self.cores or not self.seeds:
            raise ConfigError("--cores and --seeds must each name at least one value")
        try:
            for core in self.cores:
                check_core(core)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if len(set(self.cores)) != len(self.cores) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("--cores and --seeds must not repeat a value")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")


def _safe(spec: str) -> str:
    return spec.replace(":", "_").replace("-", "x")


def _run_one(cfg: Config) -> dict:
    from .trainer import train

    return train(cfg)


def run_grid(grid: GridConfig) -> tuple[str, list[dict]]:
    """Train every core x seed; returns the grid folder and the summaries (in grid order)."""
    base = grid.base
    name = base.run_name or f"grid__{base.task_label}__{time.strftime('%Y%m%d-%H%M%S')}"
    grid_dir = make_run_dir(base.logdir, base.task_label, "grid", 0, name)
    write_json(os.path.join(grid_dir, "grid.json"), {
        "base": base.to_dict(), "cores": list(grid.cores), "seeds": list(grid.seeds), "jobs": grid.jobs,
        "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    configs = [base.replace(core=c, seed=s, logdir=grid_dir, run_name=f"{_safe(c)}__s{s}", progress=False)
               for c in grid.cores for s in grid.seeds]
    start, summaries = time.perf_counter(), []

    def done(i: int, s: dict) -> None:
        acc = "n/a" if s["final_accuracy"] is None else f"{s['final_accuracy']:.3f}"
        print(f"[{i}/{len(configs)} {time.perf_counter() - start:6.0f}s] {s['core']:8s} seed {s['seed']}: "
              f"{s['steps']} steps, eval loss {s['final_loss']}, accuracy {acc} ({s['status']})", file=sys.stderr)

    if grid.jobs == 1:
        for i, cfg in enumerate(configs, 1):
            summaries.append(_run_one(cfg))
            done(i, summaries[-1])
    else:
        with ProcessPoolExecutor(grid.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, cfg) for cfg in configs]
            for i, fut in enumerate(futures, 1):
                summaries.append(fut.result())
                done(i, summaries[-1])
    write_report([s["run_dir"] for s in summaries], os.path.join(grid_dir, "grid"),
                 title=f"{base.task_label}: {len(grid.cores)} cores x seeds {', '.join(map(str, grid.seeds))}")
    return grid_dir, summaries


def find_runs(paths: list[str]) -> list[str]:
    """Run folders (holding summary.json) among ``paths``, in the given order, or directly inside
    them (a grid folder's runs in its grid.json order of cores, then seeds)."""
    runs = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "summary.json")):
            runs.append(path)
        elif os.path.isdir(path):
            inside = sorted(os.path.join(path, d) for d in os.listdir(path)
                            if os.path.isfile(os.path.join(path, d, "summary.json")))
            if os.path.isfile(os.path.join(path, "grid.json")):
                with open(os.path.join(path, "grid.json")) as f:
                    rank = {c: i for i, c in enumerate(json.load(f)["cores"])}

                def key(run: str) -> tuple[int, int]:
                    with open(os.path.join(run, "summary.json")) as f:
                        s = json.load(f)
                    return rank.get(s["core"], len(rank)), s["seed"]
                inside.sort(key=key)
            runs += inside
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(run_dirs: list[str], out: str, title: str = "") -> dict[str, str]:
    """Write ``out``.md / .csv / .png for the given run folders; returns the three paths."""
    runs = []
    for d in run_dirs:
        with open(os.path.join(d, "summary.json")) as f:
            runs.append((json.load(f), read_curve(d)))
    if not runs:
        raise ConfigError("no finished runs (folders with summary.json) to report")
    columns = ["core", "seed", "steps", "status", "final_loss", "final_accuracy", "best_accuracy",
               "final_train_loss", "baseline_loss", "ms_per_step", "wall_time_s", "run_dir"]
    with open(out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for s, _ in runs:
            writer.writerow({**s, "run_dir": os.path.relpath(s["run_dir"], os.path.dirname(out) or ".")})
    order: dict[str, list[dict]] = {}
    for s, _ in runs:
        order.setdefault(s["core"], []).append(s)
    first = runs[0][0]
    lines = [f"**{title}**" if title else "", "",
             f"Baseline loss (memoryless) {first['baseline_loss']:.3f}. Mean +- std over seeds; eval = held-out set "
             "at the last step.", "",
             "| core | seeds | steps | eval loss | eval accuracy | best accuracy | ms/step |",
             "|---|---|---|---|---|---|---|"]
    for core, group in order.items():
        def cell(key: str, digits: int = 3) -> str:
            vals = [g[key] for g in group if g[key] is not None]
            if not vals:
                return "n/a"
            m, sd = _mean_std(vals)
            return f"{m:.{digits}f} +- {sd:.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"
        steps = sorted({g["steps"] for g in group})
        lines.append(f"| `{core}` | {len(group)} | {'/'.join(map(str, steps))} | {cell('final_loss')} | "
                     f"{cell('final_accuracy')} | {cell('best_accuracy')} | {cell('ms_per_step', 1)} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines).lstrip("\n") + "\n")
    _plot(order, {s["run_dir"]: c for s, c in runs}, out + ".png", title, first["baseline_loss"])
    return {"md": out + ".md", "csv": out + ".csv", "png": out + ".png"}


def _style(core: str, index: int):
    import matplotlib.pyplot as plt

    core = {"urlstm": "lstm:UR"}.get(core, core)
    if core.startswith("lstm:"):
        x, y = core[5], core[6]
        colors = {"-": "tab:gray", "C": "tab:green", "O": "tab:purple", "U": "tab:red"}
        return colors[x], {"-": ":", "M": "--", "R": "-"}[y]
    fixed = {"lstm": "black", "gru": "tab:blue", "urgru": "tab:orange", "mlp": "tab:brown"}
    return fixed.get(core, plt.get_cmap("tab10")(index % 10)), "-."


def _plot(order: dict[str, list[dict]], curves: dict[str, list[dict]], file: str, title: str,
          baseline: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (core, group) in enumerate(order.items()):
        color, style = _style(core, i)
        for ax, key in zip(axes, ("train_loss", "eval_accuracy")):
            series = [[(r["step"], r[key]) for r in curves[g["run_dir"]] if r[key] is not None] for g in group]
            n = min(len(s) for s in series)
            if n == 0:
                continue
            steps = [p[0] for p in series[0][:n]]
            mean = [statistics.fmean(s[j][1] for s in series) for j in range(n)]
            if key == "train_loss":  # running mean over 5 logged points: the copy loss is noisy per batch
                mean = [statistics.fmean(mean[max(0, j - 4):j + 1]) for j in range(n)]
            ax.plot(steps, mean, style, color=color, label=core, lw=1.8 if core in ("lstm:UR", "urlstm", "urgru") else 1.1)
    axes[0].axhline(baseline, color="black", lw=0.8, alpha=0.6, label="memoryless baseline")
    axes[0].set(xlabel="step", ylabel="training loss (mean over seeds, smoothed)")
    axes[1].set(xlabel="step", ylabel="eval accuracy (mean over seeds)")
    axes[1].legend(fontsize=7, ncol=2, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
