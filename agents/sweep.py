"""Compare memory cores: every (core, sweep value, seed) trained as its own ``train.py`` process.

    python train.py compare --env urlstm/TMazePassive-v0 --cores lstm,urlstm,mlp --seeds 3 \\
        --sweep length=50,100 --jobs 2 --out runs/tmaze -- --total-steps "{1_000_000 + 2000*length}"

Each run is a normal run folder ``OUT/<core>__<key><value>__s<seed>``, so TensorBoard shows them all
together. Flags after the compare flags are passed to every run; ``{expression}`` in them is
evaluated with the sweep variable (e.g. ``--num-steps "{length + 1}"``). A second invocation with the
same ``--out`` skips finished runs, resumes interrupted ones from their checkpoint and redoes broken
ones (their folder is kept as ``OUT/broken/<name>-<time>``); at the end ``report.md`` and
``report.png`` are written (``agents/report.py``).
"""

from __future__ import annotations

import ast
import contextlib
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agents.logger import read_json, write_json

TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
DONE_STATUSES = ("finished", "diverged")


class SweepError(ValueError):
    """Bad compare input; printed as one line by train.py (exit code 2)."""


def parse_sweep(text: str | None) -> tuple[str | None, list[Any]]:
    """``"length=50,100"`` -> ("length", [50, 100]); None -> (None, [None])."""
    if text is None:
        return None, [None]
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier() or not values.strip():
        raise SweepError(f"--sweep takes KEY=V1,V2,... (an env keyword and its values), got {text!r}")
    out = []
    for item in values.split(","):
        item = item.strip()
        if not item:
            raise SweepError(f"--sweep {text!r} has an empty value")
        try:
            out.append(ast.literal_eval(item))
        except (ValueError, SyntaxError):
            out.append(item)
    if len(set(map(repr, out))) != len(out):
        raise SweepError(f"--sweep {text!r} repeats a value")
    return key, out


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"min": min, "max": max, "int": int, "round": round}
_CMPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
         ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _eval(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand, names))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords):
        return _FUNCS[node.func.id](*(_eval(a, names) for a in node.args))
    if isinstance(node, ast.IfExp):  # a if test else b
        return _eval(node.body if _eval(node.test, names) else node.orelse, names)
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPS):
        return _CMPS[type(node.ops[0])](_eval(node.left, names), _eval(node.comparators[0], names))
    raise SweepError(f"only numbers, {', '.join(names) or 'no names'}, + - * / // % **, comparisons, "
                     f"'a if test else b' and {', '.join(_FUNCS)} may appear in {{...}}, got "
                     f"{ast.unparse(node)!r}")


def render(arg: str, names: dict[str, Any]) -> str:
    """Replace each ``{expression}`` in ``arg`` by its value (arithmetic over the sweep variable)."""
    def one(match: re.Match) -> str:
        try:
            tree = ast.parse(match.group(1), mode="eval")
        except SyntaxError:
            raise SweepError(f"cannot parse {{{match.group(1)}}} in {arg!r}") from None
        value = _eval(tree.body, names)
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return re.sub(r"\{([^{}]*)\}", one, arg)


@dataclass(frozen=True)
class Run:
    core: str
    value: Any
    seed: int
    name: str
    argv: tuple[str, ...]  # train.py flags of a fresh run


def plan(env: str, cores: Sequence[str], seeds: Sequence[int], key: str | None, values: Sequence[Any],
         env_kwargs: dict[str, Any], extra: Sequence[str], out: str,
         check: Callable[[Sequence[str]], None] | None = None) -> list[Run]:
    """Every (core, value, seed) with its run name and its train.py flags.

    ``check(argv)`` (train.py's flag parser) raises on flags that a run would reject; its message
    becomes a SweepError naming the run.
    """
    runs = []
    for value in values:
        names = {} if key is None else {key: value}
        flags = [render(a, names) for a in extra]
        if any(a in ("--core", "--seed", "--env", "--logdir", "--run-name", "--resume", "--env-kwargs")
               or a.startswith(("--core=", "--seed=", "--env=", "--env-kwargs=", "--logdir=", "--run-name=",
                                "--resume=")) for a in flags):
            raise SweepError("--env, --env-kwargs, --core, --seed, --logdir, --run-name and --resume are "
                             "set by compare itself: give them as compare flags")
        kwargs = dict(env_kwargs, **names)
        kw_flags = ["--env-kwargs", *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                                      for k, v in kwargs.items())] if kwargs else []  # else: the preset's
        for seed in seeds:  # seed-major: a sweep stopped halfway has every core at the same seeds
            for core in cores:
                tag = "" if key is None else f"__{key}{value}"
                name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', core)}{tag}__s{seed}"
                argv = (*flags, "--env", env, *kw_flags, "--core", core, "--seed", str(seed),
                        "--logdir", out, "--run-name", name, "--no-progress")
                if check is not None:
                    try:
                        check(argv)
                    except ValueError as err:
                        raise SweepError(f"run {name}: {err}") from None
                runs.append(Run(core, value, seed, name, argv))
    for core in cores:
        _check_core(core)
    return runs


def _check_core(core: str) -> None:
    from policies.cores import make_core

    try:
        make_core(core, 2, 2)
    except ValueError as err:
        raise SweepError(str(err)) from None


def run_state(run_dir: str) -> str:
    """"done", "resume" (a checkpoint to continue from), "broken" (a folder without one) or "new"."""
    from agents import checkpoint as ckpt

    if not os.path.isdir(run_dir):
        return "new"
    summary = read_json(os.path.join(run_dir, "summary.json")) or {}
    if summary.get("status", "").startswith(DONE_STATUSES):
        return "done"
    return "resume" if os.path.isfile(ckpt.path(run_dir)) else "broken"


def _command(run: Run, out: str) -> list[str]:
    run_dir = os.path.join(out, run.name)
    state = run_state(run_dir)
    if state == "resume":  # its checkpoint holds the run's settings (sweep.json keeps them unchanged)
        return [sys.executable, TRAIN_PY, "--resume", run_dir]
    if state == "broken":
        aside = os.path.join(out, "broken", f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(run_dir, aside)
    return [sys.executable, TRAIN_PY, *run.argv]


def _summary_line(run: Run, key: str | None, run_dir: str, code: int, seconds: float) -> str:
    label = f"{run.core}" + ("" if key is None else f" {key}={run.value}") + f" seed {run.seed}"
    s = read_json(os.path.join(run_dir, "summary.json"))
    if s is None:
        return f"{label}: FAILED (exit {code}; see {run_dir}.log)"
    succ = s.get("final_success_rate")
    ret = s.get("final_return")
    what = (f"success {succ:.2f}" if succ is not None
            else f"return {ret:.2f}" if isinstance(ret, (int, float)) else f"return {ret}")
    return f"{label}: {s['status']}, {what} ({s['total_steps']:,} steps, {seconds / 60:.1f} min)"


def compare(env: str, cores: Sequence[str], seeds: Sequence[int], sweep: str | None,
            env_kwargs: dict[str, Any], extra: Sequence[str], out: str, jobs: int = 1,
            progress: bool = True, check: Callable[[Sequence[str]], None] | None = None,
            command: str | None = None) -> dict:
    """Run the sweep (at most ``jobs`` processes at a time), then write the report.

    Returns:
        {"runs": total, "done": finished now or before, "failed": [names], "report": path or None}.
    """
    from agents import report

    if jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {jobs}")
    if not cores:
        raise SweepError("--cores is empty")
    key, values = parse_sweep(sweep)
    runs = plan(env, cores, seeds, key, values, env_kwargs, extra, out, check)
    os.makedirs(out, exist_ok=True)
    with _exclusive(out):
        _remember(out, {"env": env, "env_kwargs": env_kwargs, "sweep_key": key, "train_flags": list(extra)},
                  values, cores, seeds, command)
        failed = _launch(runs, out, key, jobs, progress)
        done = any(run_state(os.path.join(out, r.name)) == "done" for r in runs)
        report_file = report.write(out) if done else None
    return {"runs": len(runs), "done": len(runs) - len(failed), "failed": failed, "report": report_file}


@contextlib.contextmanager
def _exclusive(out: str):
    """One compare at a time per folder: a second one would take the first's running runs for broken."""
    with open(os.path.join(out, ".lock"), "w") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(f"another 'train.py compare' is running on {out}: wait for it to end "
                             "(its runs are in progress) or use another --out") from None
        yield


def _remember(out: str, meta: dict[str, Any], values: Sequence[Any], cores: Sequence[str],
              seeds: Sequence[int], command: str | None) -> None:
    """Write OUT/sweep.json: the settings every run shares (a different one needs another --out, except
    train flags that give the runs already there the same flags), the union of the values, cores and
    seeds asked for so far, the runs asked for: [core, value, seed] (two commands on one folder,
    e.g. 3 seeds of some cores and 1 of others, plan their own runs, not every combination), and the
    command lines that asked, in order."""
    file = os.path.join(out, "sweep.json")
    old = read_json(file)
    from agents.report import asked_commands, asked_runs

    runs = asked_runs({"values": values, "seeds": seeds, "cores": cores})
    commands = [command] if command else []
    if old is not None:
        differ = [k for k in meta if old.get(k) != meta[k]
                  and not (k == "train_flags" and _same_for(old, meta[k]))]
        if differ:
            raise SweepError(f"{out} holds a sweep with other {', '.join(differ)} "
                             f"({', '.join(repr(old.get(k)) for k in differ)}): use another --out")
        runs = _union(asked_runs(old), runs)
        values, cores = _union(old["values"], values), _union(old["cores"], cores)
        seeds = sorted(set(old["seeds"]) | set(seeds))
        commands = _union(asked_commands(old), commands)
    write_json(file, {**meta, "values": list(values), "cores": list(cores), "seeds": list(seeds),
                      "runs": runs, "commands": commands})


def _union(first: Sequence[Any], then: Sequence[Any]) -> list[Any]:
    """``first``, then the items of ``then`` not in it, in order (lists of unhashable items too)."""
    return list(first) + [x for x in then if x not in first]


def _same_for(old: dict[str, Any], flags: Sequence[str]) -> bool:
    """Do ``flags`` render to the folder's old flags for every value swept there so far?

    So an expression may be rewritten for new values (e.g. a budget cap that only longer lengths
    reach) as long as no existing run would have been started differently.
    """
    key = old.get("sweep_key")
    try:
        return all([render(a, {} if key is None else {key: v}) for a in old.get("train_flags", [])]
                   == [render(a, {} if key is None else {key: v}) for a in flags]
                   for v in old.get("values", [None]))
    except SweepError:
        return False


def _launch(runs: Sequence[Run], out: str, key: str | None, jobs: int, progress: bool) -> list[str]:
    """Run what is not done yet, ``jobs`` processes at a time; returns the names of failed runs."""
    from tqdm import tqdm

    todo = [r for r in runs if run_state(os.path.join(out, r.name)) != "done"]
    failed: list[str] = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc="compare",
               disable=not progress, dynamic_ncols=True)
    running: dict[subprocess.Popen, tuple[Run, float, Any]] = {}
    queue = list(todo)
    shown = ""
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                log = open(os.path.join(out, f"{run.name}.log"), "a")
                proc = subprocess.Popen(_command(run, out), stdout=log, stderr=subprocess.STDOUT,
                                        cwd=os.getcwd())
                running[proc] = (run, time.time(), log)
            names = ", ".join(r.name for r, _, _ in running.values())
            if names != shown:
                bar.set_postfix_str(names)
                shown = names
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, started, log = running.pop(proc)
                log.close()
                run_dir = os.path.join(out, run.name)
                if run_state(run_dir) != "done":
                    failed.append(run.name)
                bar.write(_summary_line(run, key, run_dir, proc.returncode, time.time() - started))
                bar.update(1)
    except KeyboardInterrupt:
        for proc in running:  # each run saves a checkpoint and stops at the end of its update
            proc.send_signal(signal.SIGINT)
        for proc, (_, _, log) in running.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        bar.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    bar.close()
    return failed


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
