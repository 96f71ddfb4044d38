"""``python -m supervised TASK [flags]``: supervised benchmarks of the memory cores.

    python -m supervised copy   --core urlstm [--lag 480 --time-budget 1200 ...]
    python -m supervised adding --core lstm --length 1000
    python -m supervised pixels --core urgru --dataset digits --permute
    python -m supervised grid   --task pixels --permute --seeds 1,2,3 --steps 400 [--cores a,b,...] [--jobs 2]
    python -m supervised report RUN_OR_GRID_FOLDER... --out results/name   (table + curves of finished runs)
    python -m supervised speed  --task copy --lag 480 [--reps 5] [--cores a,b,...]  (ms per training step)

Flags are generated from ``supervised.config.Config`` (its field docstrings are the help text).
Bad input prints one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import typing
from typing import NoReturn, Sequence

from .config import TASKS, Config, ConfigError
from .datasets import BadData, MissingData


class UsageError(Exception):
    """Bad command-line input: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal written under it."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: " ".join(nxt.value.value.split()) for node, nxt in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)}


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ("task",)) -> None:
    """One flag per Config field; defaults SUPPRESSed so Config's own defaults (and task defaults) apply."""
    docs, hints = field_docs(Config), typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        help_text = docs.get(f.name, "") + ("" if f.default is None else f" (default: {f.default})")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(flag, type=_optional(base) if optional else base, metavar=base.__name__.upper(),
                                **common)


def _list(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    parse.__name__ = f"{kind.__name__} list"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m supervised", description="Supervised sequence benchmarks of the memory "
                     "cores: copy, adding, sequential pixels, and the gate-grid ablation.")
    sub = parser.add_subparsers(dest="command", metavar="TASK", parser_class=_Parser)
    helps = {"copy": "remember 10 tokens over --lag blanks and recall them on a cue",
             "adding": "regress the sum of two marked values in a sequence of --length",
             "pixels": "classify images fed pixel by pixel (--dataset digits|mnist|cifar10, --permute)"}
    for task in TASKS:
        add_config_flags(sub.add_parser(task, help=helps[task], description=helps[task]))
    grid = sub.add_parser("grid", help="one task for many cores x seeds: table (md, csv) and learning curves",
                          description="Run --task for every core in --cores and seed in --seeds, then write "
                          "grid.md, grid.csv and grid.png in the grid folder.")
    grid.add_argument("--task", choices=TASKS, default="pixels", help="task to run (default: pixels)")
    grid.add_argument("--cores", type=_list(str), default=None,
                      help="comma-separated core specs (default: every lstm:XY cell, lstm, gru, urgru)")
    grid.add_argument("--seeds", type=_list(int), default=(1, 2, 3), help="comma-separated seeds (default: 1,2,3)")
    grid.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default: 1)")
    add_config_flags(grid, skip=("task", "core", "seed", "progress"))
    speed = sub.add_parser("speed", help="time per training step of each core, round-robin in one process",
                           description="Median milliseconds per training step of every core in --cores on --task "
                           "(round-robin, so machine noise hits all alike); prints a Markdown table.")
    speed.add_argument("--task", choices=TASKS, default="copy", help="task whose sizes are timed (default: copy)")
    speed.add_argument("--cores", type=_list(str), default=None,
                       help="comma-separated core specs (default: every lstm:XY cell, lstm, gru, urgru)")
    speed.add_argument("--reps", type=int, default=5, help="timed steps per core (default: 5)")
    add_config_flags(speed, skip=("task", "core", "progress", "logdir", "run_name", "time_budget", "eval_every",
                                  "log_every", "steps"))
    report = sub.add_parser("report", help="table (md, csv) and learning curves of finished run folders",
                            description="Write OUT.md, OUT.csv and OUT.png from run folders (or folders of runs).")
    report.add_argument("runs", nargs="+", help="run folders, or folders that contain run folders")
    report.add_argument("--out", required=True, help="output path without extension")
    report.add_argument("--title", default="", help="figure and table title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except (UsageError, ConfigError, MissingData, BadData) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        raise UsageError("name a TASK: copy, adding, pixels, grid, report or speed (python -m supervised -h for help)")
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "report":
        from .grid import find_runs, write_report

        runs = find_runs(args["runs"])
        if not runs:
            raise UsageError(f"no run folders with summary.json in {', '.join(args['runs'])}")
        os.makedirs(os.path.dirname(os.path.abspath(args["out"])), exist_ok=True)
        paths = write_report(runs, args["out"], args["title"])
        print("\n".join(paths.values()))
        return 0
    if command == "speed":
        from .grid import DEFAULT_CORES, GridConfig
        from .speed import markdown, measure

        cores, reps = args.pop("cores") or DEFAULT_CORES, args.pop("reps")
        if reps < 1:
            raise UsageError(f"--reps must be >= 1, got {reps}")
        base = Config(task=args.pop("task"), core=cores[0], progress=False, eval_size=1, **args)
        GridConfig(base, tuple(cores), (base.seed,))  # validates the core list
        print(markdown(base, measure(base, tuple(cores), reps), reps))
        return 0
    if command == "grid":
        from .grid import DEFAULT_CORES, GridConfig, run_grid

        cores, seeds, jobs = args.pop("cores") or DEFAULT_CORES, args.pop("seeds"), args.pop("jobs")
        grid = GridConfig(Config(task=args.pop("task"), core=cores[0], **args), tuple(cores), tuple(seeds), jobs)
        grid_dir, _ = run_grid(grid)
        print(open(os.path.join(grid_dir, "grid.md")).read())
        print(f"grid folder: {grid_dir} (grid.md, grid.csv, grid.png)")
        return 0
    from .trainer import train

    try:
        summary = train(Config(task=command, **args))
    except ValueError as err:  # core options and the like, from policies.cores
        raise UsageError(str(err)) from None
    print(report(summary))
    return 1 if summary["status"].startswith("diverged") else 0


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
