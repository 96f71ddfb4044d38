"""Whole-process training speed of this PPO against PufferLib, Sample Factory and sb3-contrib.

    python benchmarks/peers.py --setup           # once: the peers' virtual environments
    python benchmarks/peers.py                   # 2 rounds, 32,768 steps, both tasks, every peer
    python benchmarks/peers.py --steps 65536 --rounds 3 --tasks minigrid --peers ours,pufferlib

The same job for every learner, each in a process of its own started the way its users start it:
this PPO as ``python train.py ...``; sb3-contrib's RecurrentPPO, PufferLib's PuffeRL (LSTMWrapper,
multiprocessing vectorisation) and Sample Factory's APPO (LSTM core, its parallel runner) through
the small programs in ``benchmarks/peer_jobs/``. Tasks, through Gymnasium: MiniGrid-MemoryS7-v0
(the peers see the 7x7x3 view flattened to 147 numbers; this PPO its own image encoder; all of them
MiniGrid's view computed by ``envs/minigrid_view.py``) and popgym-RepeatPreviousMedium-v0 (one-hot
observation). Shared: ``--steps`` env steps, 16 envs, 128-step rollouts trained as whole 128-step
sequences, 4 epochs of 4 minibatches (16 gradient steps per 2,048 steps), LSTM width 128, CPU only,
``--torch-threads`` torch threads per process (default 1: this PPO's default and Sample Factory's
own choice; PufferLib and sb3-contrib would take one per core, which on a shared machine runs many
times slower). What differs, because the peers fix it:

- PufferLib draws each of its 16 minibatches of 4 sequences by advantage-weighted sampling
  (``prio_alpha`` 0 here: uniform) rather than as 4 passes over a shuffled rollout, and starts
  each rollout from a zero LSTM state (the episodes go on). Its workers busy-wait for actions.
- Sample Factory is asynchronous (APPO): rollout workers keep stepping while the learner trains,
  so it may train on slightly stale data and stops a little after ``--steps`` (its count is used).
  Its rollout workers run at niceness +10 (its own choice) and each steps its envs in two halves.
- sb3-contrib steps its envs in the learner's process (DummyVecEnv); so does this PPO unless its
  preset for the task says otherwise (the run's config.json is reported).
- The networks: each learner's own default around an LSTM of width 128 (listed per peer in the
  output); this PPO encodes the MiniGrid image with its CNN and feeds the previous action and reward.

PufferLib's wheel pins torch 2.9.0, a CUDA build of several GB, and its compiled ``_C`` (which
PuffeRL needs) links CUDA. ``--setup`` instead builds pufferlib-core from its source distribution
with ``PUFFERLIB_DISABLE_CUDA=1`` (its build's CPU switch) against the same CPU torch as the
project's, installed with ``--no-deps --no-build-isolation``; Sample Factory (gymnasium < 1.0,
numpy < 2) gets the same torch. Each peer's environment lives in ``.peers/<peer>`` (ignored by git).
Wall seconds run from start to exit of the job's process; CPU seconds are user + system time of
it and of every process it started (this process becomes a child subreaper, so workers a peer leaves
behind are waited for and counted too). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import typing
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peer_jobs import runner

ROOT = Path(__file__).resolve().parent.parent
NUM_ENVS, ROLLOUT, EPOCHS, MINIBATCHES, HIDDEN = 16, 128, 4, 4, 128
BATCH = NUM_ENVS * ROLLOUT
TASKS = {"minigrid": "MiniGrid-MemoryS7-v0", "popgym": "popgym-RepeatPreviousMedium-v0"}
PEERS = ("ours", "sb3-contrib", "pufferlib", "sample-factory")
JOBS = {"sb3-contrib": "sb3_job.py", "pufferlib": "pufferlib_job.py",
        "sample-factory": "sample_factory_job.py"}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def _names(text: str, known: dict[str, str], what: str) -> list[str]:
    out = []
    for name in (n.strip() for n in text.split(",")):
        if name not in known:
            raise UsageError(f"unknown {what} {name!r} (choose from {', '.join(sorted(set(known)))})")
        if known[name] not in out:
            out.append(known[name])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; raises UsageError with a one-line message."""
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16 * BATCH,
                   help=f"env steps per job, a multiple of {BATCH} ({NUM_ENVS} envs x {ROLLOUT})")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each runs every peer once per task")
    p.add_argument("--tasks", default="minigrid,popgym", help=f"comma list of {', '.join(TASKS)} "
                   "(or their Gymnasium ids)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    p.add_argument("--core", default="lstm", help="this PPO's memory core (the peers use nn.LSTM)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads of every learner process (0: each one's own default)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a job is killed")
    p.add_argument("--setup", action="store_true",
                   help="create the virtual environments of the --peers that need one (missing "
                        "or outdated ones; a run creates them too), report them, then exit")
    args = p.parse_args(argv)
    if args.steps <= 0 or args.steps % BATCH:
        raise UsageError(f"--steps must be a positive multiple of {BATCH} ({NUM_ENVS} envs x "
                         f"{ROLLOUT}-step rollouts), got {args.steps}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    if args.torch_threads < 0:
        raise UsageError(f"--torch-threads must be >= 0, got {args.torch_threads}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    args.tasks = _names(args.tasks, {**TASKS, **{v: v for v in TASKS.values()}}, "task")
    args.peers = _names(args.peers, {p: p for p in PEERS}, "peer")
    return args


def job_command(peer: str, task: str, args: argparse.Namespace, seed: int, workdir: str,
                out: str) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment variables of one job."""
    extra = {} if args.torch_threads == 0 else {"OMP_NUM_THREADS": str(args.torch_threads),
                                                "MKL_NUM_THREADS": str(args.torch_threads)}
    if peer == "ours":
        cmd = [sys.executable, str(ROOT / "train.py"), "--env", task, "--core", args.core,
               "--hidden-size", str(HIDDEN), "--num-envs", str(NUM_ENVS), "--num-steps", str(ROLLOUT),
               "--seq-len", str(ROLLOUT), "--num-minibatches", str(MINIBATCHES),
               "--update-epochs", str(EPOCHS), "--total-steps", str(args.steps), "--seed", str(seed),
               "--device", "cpu", "--torch-threads", str(args.torch_threads), "--eval-episodes", "0",
               "--no-progress", "--logdir", workdir, "--run-name", "run"]
        return cmd, extra
    python = sys.executable if runner.VENVS.get(peer) is None else str(runner.venv_python(peer))
    cmd = [python, str(ROOT / "benchmarks" / "peer_jobs" / JOBS[peer]), "--task", task,
           "--steps", str(args.steps), "--num-envs", str(NUM_ENVS), "--rollout", str(ROLLOUT),
           "--epochs", str(EPOCHS), "--minibatches", str(MINIBATCHES), "--hidden", str(HIDDEN),
           "--seed", str(seed), "--workdir", workdir, "--out", out]
    return cmd, extra


def read_report(peer: str, workdir: str, out: str) -> dict:
    """What the job said about itself: env steps done, versions, settings."""
    if peer != "ours":
        with open(out) as f:
            return json.load(f)
    run = Path(workdir) / "run"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    import torch

    return {"env_steps": summary["total_steps"], "loop_s": summary["wall_time_s"],
            "torch_threads": config.get("torch_threads"),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "settings": {"vectorization": f"env_kwargs {config.get('env_kwargs')}",
                         "core": config.get("core"), "preset": config.get("preset"),
                         "policy": "this package's actor-critic (agents/, policies/)"},
            "peer_version": "this repository"}


def run_one(peer: str, task: str, args: argparse.Namespace, seed: int) -> dict:
    """Run one job; its timings, report, or the error that stopped it."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer}-") as workdir:
        out = os.path.join(workdir, "result.json")
        cmd, extra = job_command(peer, task, args, seed, workdir, out)
        record = {"peer": peer, "task": task, "seed": seed,
                  **runner.timed_run(cmd, extra, args.timeout, workdir)}
        if record["rc"] == 0:
            try:
                record["report"] = read_report(peer, workdir, out)
            except (OSError, ValueError, KeyError) as err:
                record["error"] = f"no report from the job: {type(err).__name__}: {err}"
        else:
            record["error"] = (f"exit code {record['rc']}: {' '.join(cmd)}: "
                               f"{record.pop('stderr_tail', '') or 'no output'}")
        record.pop("stderr_tail", None)
    return record


def summarize(records: list[dict], peers: list[str], tasks: list[str]) -> list[dict]:
    """Per peer and task: totals over the rounds that worked, SPS, and ours against it.

    ``ours_speedup_wall`` is our SPS over the peer's (both wall-clock, whole process);
    ``ours_speedup_cpu`` is the peer's CPU seconds per step over ours. Above 1: ours is faster.
    ``loop_sps`` counts only the seconds each job spent in its training loop (as it reports them:
    no interpreter start, imports or set-up), for reading the whole-process figures.
    """
    rows = []
    for task in tasks:
        rates = {}  # peer -> (SPS, CPU seconds per step), unrounded
        for peer in peers:
            ok = [r for r in records if r["peer"] == peer and r["task"] == task and "error" not in r]
            failed = [r for r in records if r["peer"] == peer and r["task"] == task and "error" in r]
            row = {"peer": peer, "task": task, "rounds_ok": len(ok), "rounds_failed": len(failed)}
            if ok:
                steps = sum(r["report"]["env_steps"] for r in ok)
                wall = sum(r["wall_s"] for r in ok)
                cpu = sum(r["cpu_s"] for r in ok)
                rates[peer] = (steps / wall, cpu / steps)
                loop = [r["report"].get("loop_s") for r in ok]
                row.update({
                    "env_steps_per_job": [r["report"]["env_steps"] for r in ok],
                    "wall_s_per_job": [round(r["wall_s"], 2) for r in ok],
                    "cpu_s_per_job": [round(r["cpu_s"], 2) for r in ok],
                    "sps": round(steps / wall, 1), "cpu_s_per_1k_steps": round(1000 * cpu / steps, 3),
                    "cores_busy": round(cpu / wall, 2),
                    "loop_sps": round(steps / sum(loop), 1) if None not in loop else None})
            rows.append(row)
        for row in rows[-len(peers):]:
            both = row["peer"] in rates and "ours" in rates and row["peer"] != "ours"
            (sps, cpu), (our_sps, our_cpu) = (rates[row["peer"]], rates["ours"]) if both else ((0, 0),) * 2
            row["ours_speedup_wall"] = round(our_sps / sps, 2) if both else None
            row["ours_speedup_cpu"] = round(cpu / our_cpu, 2) if both else None
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setups = {p: runner.ensure_venv(p) for p in args.peers if runner.VENVS.get(p)}
    if args.setup:
        print(json.dumps({"benchmark": "peers --setup", "venvs": setups}, indent=1))
        return 1 if any("error" in s for s in setups.values()) else 0
    peers = [p for p in args.peers if "error" not in setups.get(p, {})]
    if "ours" in peers:
        runner.prepare([sys.executable, "-c",
                        "from policies.cores.kernels import extension; extension()"])  # the one-time compile of the C++ scan, not timed
    for p in peers:
        if runner.VENVS.get(p):
            runner.prepare([str(runner.venv_python(p)), "-c", runner.VENVS[p]["check"]])
    load_start = os.getloadavg()
    runner.become_subreaper()
    records = []
    for r in range(args.rounds):
        for task in args.tasks:
            for peer in peers:
                records.append(run_one(peer, task, args, seed=r))
                rec = records[-1]
                note = rec.get("error") or f"{rec['report']['env_steps']} steps in {rec['wall_s']:.1f} s"
                print(f"round {r} {task} {peer}: {note}", file=sys.stderr, flush=True)
    from policies.cores.cpu import cpu_info

    about: dict[str, dict] = {}
    for r in (r for r in records if "report" in r):
        rep = dict(r["report"])
        entry = about.setdefault(r["peer"], {"settings": {}})
        entry["settings"][r["task"]] = rep.pop("settings")
        entry.update({k: v for k, v in rep.items() if k not in ("env_steps", "loop_s")})
    print(json.dumps({
        "benchmark": "peers", "command": " ".join(["python", "benchmarks/peers.py", *sys.argv[1:]]),
        "steps": args.steps, "rounds": args.rounds, "tasks": args.tasks, "core": args.core,
        "shared": {"num_envs": NUM_ENVS, "rollout": ROLLOUT, "seq_len": ROLLOUT, "epochs": EPOCHS,
                   "minibatches": MINIBATCHES, "lstm_hidden": HIDDEN, "device": "cpu",
                   "torch_threads": args.torch_threads or "each learner's default"},
        "results": summarize(records, peers, args.tasks),
        "peers": about,
        "setup_errors": {p: s["error"] for p, s in setups.items() if "error" in s},
        "machine": {"cpu": cpu_info(), "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                    "other_processes_cpu_s": round(sum(r["others_cpu_s"] for r in records), 1),
                    "jobs_cpu_s": round(sum(r["cpu_s"] for r in records), 1)},
        "jobs": records,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=1))
    return 0 if any("report" in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
