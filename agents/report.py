"""Aggregate a folder of runs (``train.py compare``) into ``report.md``, ``report.png`` and ``report.pdf``.

    python train.py report runs/NAME

Per core and sweep value: final success (greedy evaluation at the end of each run; the return for a
task without success, such as POPGym's, whose returns lie in [-1, 1]) as the mean over
seeds with a 95% percentile-bootstrap interval and the interquartile mean; the steps at which the
success curve first reaches 0.9; SPS; the forget-gate statistics of the end of training. Per core:
the **memory horizon**, the largest swept value solved (final success >= 0.9) by a majority of seeds.
Where the sweep holds gate-grid cells (``lstm:XY``, ``gru:XY``): their heatmaps and the paper's two
claims read off them (``agents/gate_grid.py``).
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from agents import gate_grid
from agents.logger import read_json
from policies.cores.gates import AUXILIARY, PRIMARY

SOLVED = 0.9
_EPS = 1e-6  # TensorBoard stores float32: 0.9 comes back as 0.8999999762
CURVE_TAGS = ("charts/eval_success_rate", "charts/success_rate")  # first present wins
# a task without success (POPGym, Gymnasium ids) is read by its return, with the same threshold:
# POPGym's returns lie in [-1, 1], 1 the best
RETURN_TAGS = ("charts/eval_return", "charts/episodic_return")


@dataclass
class RunResult:
    name: str
    core: str
    seed: int
    env: str
    env_kwargs: dict[str, Any]
    status: str | None                         # None: no summary.json (unfinished)
    final_success: float | None
    final_return: float | None
    sps: float | None
    total_steps: int | None
    curve: tuple[np.ndarray, np.ndarray] | None = None  # (steps [N], success [N])
    curve_tag: str | None = None
    memory: dict[str, float] = field(default_factory=dict)  # last memory/ scalars
    metric: str = "success"                    # or "return": final_success and curve hold returns


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------

def bootstrap_ci(x: Sequence[float], n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``x`` (a single value gives (x, x))."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (floor(n/4) values cut at each end)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    k = x.size // 4
    return float(x[k:x.size - k].mean()) if x.size else math.nan


def steps_to(steps: np.ndarray, values: np.ndarray, threshold: float = SOLVED) -> int | None:
    """First logged step at which ``values`` reaches ``threshold`` (None: never)."""
    hit = np.flatnonzero(np.asarray(values) >= threshold - _EPS)
    return int(steps[hit[0]]) if hit.size else None


def horizon(success_by_value: dict[Any, Sequence[float]], threshold: float = SOLVED) -> Any:
    """Largest value whose runs reach ``threshold`` on a strict majority of seeds (None: none)."""
    solved = [v for v, xs in success_by_value.items()
              if len(xs) and 2 * sum(x >= threshold - _EPS for x in xs) > len(xs)]
    return max(solved) if solved else None


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def _scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a resumed run's events after its last checkpoint are superseded: TensorBoard drops them (purge_step)
    # and says so at warning level
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 1, "tensors": 1})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        if tag in CURVE_TAGS or tag in RETURN_TAGS or tag.startswith("memory/"):
            events = acc.Scalars(tag)
            steps = np.array([e.step for e in events], dtype=np.int64)
            values = np.array([e.value for e in events], dtype=np.float64)
            order = np.argsort(steps, kind="stable")  # a resumed run appends after a purge
            out[tag] = (steps[order], values[order])
    return out


def load_runs(folder: str) -> list[RunResult]:
    """Every run folder (one holding config.json) directly under ``folder``."""
    runs = []
    for name in sorted(os.listdir(folder)):
        run_dir = os.path.join(folder, name)
        cfg = read_json(os.path.join(run_dir, "config.json"))
        if cfg is None:
            continue
        summary = read_json(os.path.join(run_dir, "summary.json")) or {}
        r = RunResult(name=name, core=cfg["core"], seed=cfg["seed"], env=cfg["env"],
                      env_kwargs=cfg.get("env_kwargs") or {}, status=summary.get("status"),
                      final_success=summary.get("final_success_rate"), final_return=summary.get("final_return"),
                      sps=summary.get("sps"), total_steps=summary.get("total_steps"))
        scalars = _scalars(run_dir)
        success = r.final_success is not None or any(t in scalars for t in CURVE_TAGS)
        if not success:
            r.metric, r.final_success = "return", r.final_return
        for tag in CURVE_TAGS if success else RETURN_TAGS:
            if tag in scalars and scalars[tag][0].size:
                r.curve, r.curve_tag = scalars[tag], tag
                break
        r.memory = {tag[len("memory/"):]: float(v[-1]) for tag, (s, v) in scalars.items()
                    if tag.startswith("memory/") and v.size}
        runs.append(r)
    return runs


def sweep_key(folder: str, runs: Sequence[RunResult]) -> str | None:
    """The swept env keyword: from sweep.json, else the one env kwarg whose value differs across runs."""
    meta = read_json(os.path.join(folder, "sweep.json"))
    if meta is not None:
        return meta.get("sweep_key")
    keys = {k for r in runs for k in r.env_kwargs}
    varying = [k for k in sorted(keys) if len({repr(r.env_kwargs.get(k)) for r in runs}) > 1]
    return varying[0] if len(varying) == 1 else None


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------

def asked_runs(meta: dict[str, Any]) -> list[list[Any]]:
    """The [core, value, seed] of every run a sweep.json asked for: its "runs", or, in a folder written
    before they were recorded, every core at every value and seed."""
    if meta.get("runs") is not None:
        return meta["runs"]
    return [[c, v, s] for v in meta.get("values", [None]) for s in meta.get("seeds", [])
            for c in meta.get("cores", [])]


def asked_commands(meta: dict[str, Any]) -> list[str]:
    """The command lines that filled a sweep folder, in order (a folder written before they were all
    recorded keeps its last one)."""
    if meta.get("commands") is not None:
        return meta["commands"]
    return [meta["command"]] if meta.get("command") else []


def aggregate(runs: Sequence[RunResult], key: str | None, planned: dict | None = None) -> dict:
    """{"cores": [...], "values": [...], "cells": {(core, value): stats}, "horizon": {core: value}}.

    ``planned`` (sweep.json: "cores", "values", "seeds" and "runs", the [core, value, seed] asked for)
    adds the runs not started yet to the counts.
    """
    finished = [r for r in runs if r.status is not None and r.status.startswith(("finished", "diverged"))]
    planned = planned or {}
    cores = list(dict.fromkeys([*planned.get("cores", []), *(r.core for r in runs)]))
    seen = {r.env_kwargs.get(key) for r in runs} | set(planned.get("values", [])) if key else {None}
    values = sorted(seen, key=_sort_key)
    n_asked = collections.Counter((c, v if key else None) for c, v, _ in asked_runs(planned))
    cells = {}
    for core in cores:
        for value in values:
            group = [r for r in finished if r.core == core and (key is None or r.env_kwargs.get(key) == value)]
            pending = sum(1 for r in runs if r.core == core and r not in finished
                          and (key is None or r.env_kwargs.get(key) == value))
            succ = [0.0 if r.final_success is None and r.status.startswith("diverged") else r.final_success
                    for r in group]
            succ = [s for s in succ if s is not None]
            reach = [steps_to(*r.curve) if r.curve is not None else None for r in group]
            reached = [s for s in reach if s is not None]
            lo, hi = bootstrap_ci(succ)
            cells[(core, value)] = {
                "seeds": len(group), "pending": pending, "planned": max(n_asked[(core, value)], len(group) + pending),
                "success": succ,
                "mean": float(np.mean(succ)) if succ else math.nan, "ci": (lo, hi), "iqm": iqm(succ),
                "steps_to_solve": float(np.median(reached)) if reached else None,
                "solved_seeds": len(reached), "steps": max((r.total_steps or 0) for r in group) if group else None,
                "sps": float(np.mean([r.sps for r in group if r.sps])) if any(r.sps for r in group) else math.nan,
                "timescale": _mean(r.memory.get("timescale_mean") for r in group),
                "timescale_median": _mean(r.memory.get("timescale_median") for r in group),
                "gate": _mean(r.memory.get("gate_mean") for r in group),
            }
    hz = {core: horizon({v: cells[(core, v)]["success"] for v in values if v is not None}) for core in cores}
    metric = "return" if runs and all(r.metric == "return" for r in runs) else "success"
    return {"cores": cores, "values": values, "cells": cells, "horizon": hz, "key": key, "metric": metric,
            "threshold": SOLVED}


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def _sort_key(v: Any):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def markdown(agg: dict, runs: Sequence[RunResult], folder: str, commands: Sequence[str] = ()) -> str:
    key, m = agg["key"], agg["metric"]
    env = runs[0].env if runs else "?"
    tags = sorted({r.curve_tag for r in runs if r.curve_tag})
    done = sum(c["seeds"] for c in agg["cells"].values())
    total = sum(c["planned"] for c in agg["cells"].values())
    lines = [f"# {env}: memory cores compared", "",
             f"{done} of {total} runs finished in `{folder}`. {m.capitalize()}: greedy evaluation at the end of each run, mean over "
             f"seeds [95% bootstrap interval], IQM = interquartile mean. Steps to {SOLVED}: median over the "
             f"seeds whose curve ({', '.join(tags) or 'none'}) reached {SOLVED} (k/n seeds). "
             "Gate, timescale: the mean forget gate g and the mean (median) of 1/(1 - g) over units and steps of the last "
             "training minibatch, averaged over seeds.", ""]
    if commands:
        lines += ["```", *commands, "```", ""]
    head = ([key] if key else []) + ["core", "seeds", m, "95% CI", "IQM", f"steps to {SOLVED}",
                                     "steps", "SPS", "gate", "timescale (median)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for value in agg["values"]:
        for core in agg["cores"]:
            c = agg["cells"][(core, value)]
            if not c["planned"]:
                continue
            seeds = f"{c['seeds']}" + (f" of {c['planned']}" if c["planned"] > c["seeds"] else "")
            reach = ("-" if c["steps_to_solve"] is None else f"{c['steps_to_solve']:,.0f}") + \
                f" ({c['solved_seeds']}/{c['seeds']})"
            row = ([str(value)] if key else []) + [
                f"`{core}`", seeds, _f(c["mean"]), f"[{_f(c['ci'][0])}, {_f(c['ci'][1])}]" if c["seeds"] else "-",
                _f(c["iqm"]), reach if c["seeds"] else "-",
                "-" if c["steps"] is None else f"{c['steps']:,}", _f(c["sps"], ",.0f"), _f(c["gate"]),
                f"{_f(c['timescale'], '.0f')} ({_f(c['timescale_median'], '.1f')})"]
            lines.append("| " + " | ".join(row) + " |")
    if key:
        lines += ["", f"**Memory horizon** (largest {key} solved, {m} >= {SOLVED} on a majority of seeds):", ""]
        lines += ["| core | horizon |", "|---|---|"]
        for core in agg["cores"]:
            h = agg["horizon"][core]
            lines.append(f"| `{core}` | {'none' if h is None else h} |")
    lines += ["", f"Figure: `report.png` (learning curves with 95% bootstrap bands; {m} versus "
              f"{key or 'run'})."]
    return "\n".join(lines) + "\n"


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _steps(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else f"{v:.0f}"


def grid_markdown(agg: dict) -> list[str]:
    """The gate grid's tables (success and steps per cell) and the claims table; [] without one."""
    key, panels = agg["key"], gate_grid.panels(agg)
    if not panels:
        return []
    cells = gate_grid.cells_of(agg)
    lines = ["", "## The gate grid", "",
             "Rows: the primary gate X (`-` standard, `C` chrono, `O` ordered, `U` uniform "
             "initialisation); columns: the auxiliary gate Y (`-` none, `M` master, `R` refine). "
             f"Each cell: mean final success [min, max over seeds] and the median steps to {SOLVED} "
             "(k/n seeds that got there). Figure: `report_grid.png`.", ""]
    for family, value in panels:
        lines += [f"**{family}**" + (f", {key} = {value}" if key else "") + ":", "",
                  "| X \\ Y | " + " | ".join(f"`{y}`" for y in AUXILIARY) + " |", "|---|---|---|---|"]
        for x in PRIMARY:
            row = [f"`{x}`"]
            for y in AUXILIARY:
                c = cells.get((family, value, x + y))
                row.append("not run" if c is None else
                           f"{_f(c['mean'])} [{_f(min(c['success']))}, {_f(max(c['success']))}], "
                           f"{'-' if c['steps_to_solve'] is None else _steps(c['steps_to_solve'])} "
                           f"({c['solved_seeds']}/{c['seeds']})")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["**The paper's claims** (a beats b? see `agents/gate_grid.py` for the rule):", "",
              "| claim | family | " + (f"{key} | " if key else "") + "a | b | success a | success b | a beats b |",
              "|---|---|" + ("---|" if key else "") + "---|---|---|---|---|"]
    for r in gate_grid.claims(agg):
        lines.append(f"| {r['claim']} | {r['family']} | " + (f"{r['value']} | " if key else "")
                     + f"`{r['cell']}` | `{r['against']}` | {_f(r['mean'])} | {_f(r['against_mean'])} | "
                     f"{r['verdict']} |")
    return lines


def curve_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 100, n_boot: int = 2000
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds' curves on one step grid (up to the shortest run): (steps, mean, lower, upper)."""
    end = min(s[-1] for s, _ in curves)
    start = max(s[0] for s, _ in curves)
    grid = np.linspace(start, end, points) if end > start else np.array([end], dtype=np.float64)
    ys = np.stack([np.interp(grid, s, v) for s, v in curves])  # [seeds, points]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(curves), size=(n_boot, len(curves)))
    means = ys[idx].mean(axis=1)  # [n_boot, points]
    lo, hi = np.quantile(means, [0.025, 0.975], axis=0)
    return grid, ys.mean(axis=0), lo, hi


def figure(agg: dict, runs: Sequence[RunResult], file_png: str) -> list[str]:
    """Learning curves per sweep value and success versus the swept value; writes PNG and PDF."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, cores, m = agg["key"], agg["cores"], agg["metric"]
    low = -1.03 if m == "return" else -0.03
    values = [v for v in agg["values"] if any(c["seeds"] or c["pending"] for (_, cv), c in agg["cells"].items()
                                              if cv == v)] or agg["values"]  # planned only: no panel
    panels = len(values) + (1 if key else 0)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colors = {core: plt.cm.tab10(i % 10) for i, core in enumerate(cores)}
    for ax, value in zip(axes.flat, values):
        for core in cores:
            curves = [r.curve for r in runs if r.core == core and r.curve is not None and r.curve[0].size > 1
                      and (key is None or r.env_kwargs.get(key) == value)]
            if not curves:
                continue
            x, mean, lo, hi = curve_band(curves)
            ax.plot(x, mean, color=colors[core], label=f"{core} ({len(curves)})", lw=1.4)
            ax.fill_between(x, lo, hi, color=colors[core], alpha=0.2, lw=0)
        ax.set_title(f"{key} = {value}" if key else "learning curves", fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.set_ylabel(m, fontsize=8)
        ax.set_ylim(low, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if key:
        ax = axes.flat[len(values)]
        for core in cores:
            xs, ms, los, his = [], [], [], []
            for value in values:
                c = agg["cells"][(core, value)]
                if c["success"]:
                    xs.append(value), ms.append(c["mean"]), los.append(c["ci"][0]), his.append(c["ci"][1])
            if xs:
                ms, los, his = np.array(ms), np.array(los), np.array(his)
                ax.errorbar(xs, ms, yerr=[ms - los, his - ms], color=colors[core], marker="o", ms=3,
                            capsize=2, lw=1.2, label=core)
        if all(isinstance(v, (int, float)) and v > 0 for v in values) and max(values) / min(values) >= 4:
            from matplotlib.ticker import NullFormatter, ScalarFormatter
            ax.set_xscale("log")
            ax.set_xticks(values)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"final {m} vs {key}", fontsize=9)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(f"{m} (greedy eval)", fontsize=8)
        ax.set_ylim(low, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if key:
        handles, labels = axes.flat[len(values)].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(f"{runs[0].env}: mean over seeds, 95% bootstrap bands", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    file_pdf = os.path.splitext(file_png)[0] + ".pdf"
    fig.savefig(file_png, dpi=130)
    fig.savefig(file_pdf)
    plt.close(fig)
    return [file_png, file_pdf]


def grid_figure(agg: dict, file_png: str) -> list[str]:
    """Heatmaps of mean final success and of steps to the threshold per family and sweep value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, panels, cells = agg["key"], gate_grid.panels(agg), gate_grid.cells_of(agg)
    if not panels:
        return []
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 5.6), squeeze=False)
    for j, (family, value) in enumerate(panels):
        success, steps = np.full((4, 3), np.nan), np.full((4, 3), np.nan)
        for (i, x), (k, y) in ((a, b) for a in enumerate(PRIMARY) for b in enumerate(AUXILIARY)):
            c = cells.get((family, value, x + y))
            if c is not None:
                success[i, k] = c["mean"]
                steps[i, k] = np.nan if c["steps_to_solve"] is None else c["steps_to_solve"]
        title = family + (f", {key} = {value}" if key else "")
        _heatmap(axes[0, j], success, f"{title}: final success", _f, 1.0, "viridis")
        _heatmap(axes[1, j], steps, f"{title}: steps to {SOLVED}", _steps,
                 np.nanmax(steps) if np.isfinite(steps).any() else 1.0, "viridis_r")
    fig.tight_layout()
    fig.savefig(file_png, dpi=130)
    plt.close(fig)
    return [file_png]


def _heatmap(ax, data: np.ndarray, title: str, fmt, vmax: float, cmap: str) -> None:
    ax.imshow(np.ma.masked_invalid(data), vmin=0.0, vmax=vmax, cmap=cmap)
    for (i, k), v in np.ndenumerate(data):
        ax.text(k, i, "-" if np.isnan(v) else fmt(v), ha="center", va="center", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    ax.set_xticks(range(3), [f"Y={y}" for y in AUXILIARY], fontsize=7)
    ax.set_yticks(range(4), [f"X={x}" for x in PRIMARY], fontsize=7)
    ax.set_title(title, fontsize=8)


def summarise(folder: str, key: str | None = None) -> tuple[list[RunResult], dict, dict | None]:
    """(runs, aggregate, sweep.json or None) of a folder of runs."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    runs = load_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folders (with config.json) in {folder}")
    key = key or sweep_key(folder, runs)
    meta = read_json(os.path.join(folder, "sweep.json"))
    return runs, aggregate(runs, key, planned=meta if meta and meta.get("sweep_key") == key else None), meta


def tasks_markdown(reports: Sequence[tuple[Sequence[RunResult], dict, dict | None]]) -> str:
    """Several folders (``summarise``'s results) in one table, "which core for which task": a row per
    core, a column per task (its compare's env kwargs, and the swept value); each cell the final greedy
    metric, mean [min, max] over seeds, and k/n, the seeds whose evaluation curve reached 0.9."""
    columns = []  # (title, agg, value)
    for runs, agg, meta in reports:
        fixed = [f"{k}={v}" for k, v in ((meta or {}).get("env_kwargs") or {}).items()]
        for value in agg["values"]:
            if any(c["seeds"] for (_, v), c in agg["cells"].items() if v == value):
                title = " ".join([runs[0].env, *fixed, *([f"{agg['key']}={value}"] if agg["key"] else [])])
                columns.append((f"{title} ({agg['metric']})", agg, value))
    cores = list(dict.fromkeys(core for _, agg, _ in columns for core in agg["cores"]))
    lines = ["| core | " + " | ".join(t for t, _, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for core in cores:
        row = []
        for _, agg, value in columns:
            c = agg["cells"].get((core, value))
            if c is None or not c["planned"]:
                row.append("not run")
            elif not c["seeds"]:
                row.append(f"0 of {c['planned']} finished")
            else:
                row.append(f"{_f(c['mean'])} [{_f(min(c['success']))}, {_f(max(c['success']))}] "
                           f"({c['solved_seeds']}/{c['seeds']}"
                           + (f", {c['planned'] - c['seeds']} unfinished" if c["planned"] > c["seeds"] else "")
                           + ")")
        lines.append(f"| `{core}` | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write(folder: str, key: str | None = None) -> str:
    """Write report.md, report.png, report.pdf and report.json into ``folder``; returns report.md's path."""
    return write_summary(folder, *summarise(folder, key))


def write_summary(folder: str, runs: Sequence[RunResult], agg: dict, meta: dict | None) -> str:
    """``write`` for a folder already summarised."""
    from agents.logger import write_json

    key = agg["key"]
    figure(agg, runs, os.path.join(folder, "report.png"))
    grid_figure(agg, os.path.join(folder, "report_grid.png"))
    md = os.path.join(folder, "report.md")
    with open(md + ".tmp", "w") as f:
        f.write(markdown(agg, runs, folder, asked_commands(meta or {})))
        grid = grid_markdown(agg)  # starts with an empty line: a blank line before it
        if grid:
            f.write("\n".join(grid) + "\n")
    os.replace(md + ".tmp", md)
    write_json(os.path.join(folder, "report.json"), {
        "key": key, "horizon": agg["horizon"], "gate_grid_claims": gate_grid.claims(agg),
        "cells": [{"core": core, key or "value": value, **{k: v for k, v in c.items()}}
                  for (core, value), c in agg["cells"].items()]})
    return md
