"""``python -m supervised TASK [flags]``: supervised benchmarks of the memory cores.

    python -m supervised copy   --core urlstm [--lag 480 --time-budget 1200 ...]
    python -m supervised adding --core lstm --length 1000
    python -m supervised pixels --core urgru --dataset digits --permute
    python -m supervised grid   --task pixels --permute --seeds 1,2,3 --steps 400 [--cores a,b,...] [--jobs 2]
    python -m supervised report RUN_OR_GRID_FOLDER... --out results/name   (table + curves of finished runs)
    python -m supervised speed  --task copy --lag 480 [--reps 5] [--cores a,b,...]  (ms per training step)

tyro builds the flags from ``supervised.config.Config`` and the dataclasses here (their field
docstrings are the help text).
Bad input prints one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tyro.conf import Positional

from agents.runfolder import UsageError, one_line, parse_args

from .config import TASKS, Config, ConfigError
from .datasets import BadData, MissingData

HELPS = {"copy": "remember 10 tokens over --lag blanks and recall them on a cue",
         "adding": "regress the sum of two marked values in a sequence of --length",
         "pixels": "classify images fed pixel by pixel (--dataset digits|mnist|cifar10, --permute)"}
PROG = "python -m supervised"


@dataclass(frozen=True)
class GridArgs:
    """Run --task for every core in --cores and seed in --seeds, then write grid.md, grid.csv and
    grid.png in the grid folder. Every flag of the task (python -m supervised TASK --help) but
    --core, --seed and --progress applies to every run."""

    task: str = "pixels"
    """Task to run: copy, adding or pixels."""
    cores: str | None = None
    """Comma-separated core specs (default: every lstm:XY cell, lstm, gru, urgru)."""
    seeds: str = "1,2,3"
    """Comma-separated seeds."""
    jobs: int = 1
    """Runs at a time, each in its own process."""


@dataclass(frozen=True)
class SpeedArgs:
    """Median milliseconds per training step of every core in --cores on --task (round-robin, so
    machine noise hits all alike); prints a Markdown table. The task's size flags (python -m
    supervised TASK --help) apply."""

    task: str = "copy"
    """Task whose sizes are timed: copy, adding or pixels."""
    cores: str | None = None
    """Comma-separated core specs (default: every lstm:XY cell, lstm, gru, urgru)."""
    reps: int = 5
    """Timed steps per core."""


@dataclass(frozen=True)
class ReportArgs:
    """Write OUT.md, OUT.csv and OUT.png from run folders (or folders of runs)."""

    runs: Positional[tuple[str, ...]]
    """Run folders, or folders that contain run folders."""
    out: str
    """Output path without extension."""
    title: str = ""
    """Figure and table title."""


def task_config(task: str, argv: Sequence[str], prog: str, refused: tuple[str, ...] = (),
                **fixed: Any) -> Config:
    """The task's Config from its flags (the task's defaults under them); ``refused`` flags are
    not this command's."""
    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    for name in refused:
        flag = "--" + name.replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") or a == "--no-" + flag[2:] for a in argv):
            raise UsageError(f"{flag} is not a flag of {prog}")
    return parse_args(Config, list(argv), prog, description=HELPS.get(task),
                      default=Config(task=task, **fixed))


def _csv(text: str | None, kind: Callable[[str], Any], flag: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"{flag} takes a comma-separated list, got {text!r}") from None


def run_task(task: str, argv: list[str]) -> int:
    from .trainer import train

    cfg = task_config(task, argv, f"{PROG} {task}")
    try:
        summary = train(cfg)
    except ValueError as err:  # core options and the like, from policies.cores
        raise UsageError(one_line(err)) from None
    print(report(summary))
    return 1 if summary["status"].startswith("diverged") else 0


def run_grid_command(argv: list[str]) -> int:
    from .grid import DEFAULT_CORES, GridConfig, run_grid

    args, rest = parse_args(GridArgs, argv, f"{PROG} grid", unknown=True)
    cores = _csv(args.cores, str, "--cores") or DEFAULT_CORES
    seeds = _csv(args.seeds, int, "--seeds")
    base = task_config(args.task, rest, f"{PROG} grid", ("task", "core", "seed", "progress"),
                       core=cores[0])
    grid_dir, _ = run_grid(GridConfig(base, tuple(cores), tuple(seeds), args.jobs))
    with open(os.path.join(grid_dir, "grid.md")) as f:
        print(f.read())
    print(f"grid folder: {grid_dir} (grid.md, grid.csv, grid.png)")
    return 0


def run_speed_command(argv: list[str]) -> int:
    from .grid import DEFAULT_CORES, GridConfig
    from .speed import markdown, measure

    args, rest = parse_args(SpeedArgs, argv, f"{PROG} speed", unknown=True)
    if args.reps < 1:
        raise UsageError(f"--reps must be >= 1, got {args.reps}")
    cores = _csv(args.cores, str, "--cores") or DEFAULT_CORES
    base = task_config(args.task, rest, f"{PROG} speed",
                       ("task", "core", "progress", "logdir", "run_name", "time_budget",
                        "eval_every", "log_every", "steps"), core=cores[0], progress=False,
                       eval_size=1)
    GridConfig(base, tuple(cores), (base.seed,))  # validates the core list
    print(markdown(base, measure(base, tuple(cores), args.reps), args.reps))
    return 0


def run_report_command(argv: list[str]) -> int:
    from .grid import find_runs, write_report

    args = parse_args(ReportArgs, argv, f"{PROG} report")
    runs = find_runs(list(args.runs))
    if not runs:
        raise UsageError(f"no run folders with summary.json in {', '.join(args.runs)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    paths = write_report(runs, args.out, args.title)
    print("\n".join(paths.values()))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    **{task: (lambda argv, task=task: run_task(task, argv)) for task in TASKS},
    "grid": run_grid_command, "speed": run_speed_command, "report": run_report_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in COMMANDS:
            if argv and argv[0] in ("-h", "--help"):
                print(__doc__)
                return 0
            raise UsageError(f"name a TASK: {', '.join(COMMANDS)} ({PROG} -h for help)")
        return COMMANDS[argv[0]](argv[1:])
    except (UsageError, ConfigError, MissingData, BadData) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


def report(s: dict) -> str:
    acc = "n/a" if s["final_accuracy"] is None else f"{s['final_accuracy']:.3f}"
    speed = "" if s["steps_per_s"] is None else f" ({s['ms_per_step']:.1f} ms/step)"
    return "\n".join([
        f"{s['status']}: {s['core']} on {s['task_label']}, {s['steps']} steps in {s['wall_time_s']:.0f}s{speed}",
        f"  eval loss {s['final_loss']} (memoryless baseline {s['baseline_loss']:.3f}), accuracy {acc}, "
        f"best accuracy {s['best_accuracy']}",
        f"logs:    tensorboard --logdir {s['run_dir']}",
        f"summary: {os.path.join(s['run_dir'], 'summary.json')}"])


if __name__ == "__main__":
    sys.exit(main())
