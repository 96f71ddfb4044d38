"""Evidence for the presets: the plain command ``python train.py [--algo impala] --env ID --seed S
[--core C]`` for a list of runs, at most --jobs at a time, each logged to
OUT/<env>__<core>[__impala]__s<seed>.log; then a markdown table of every run logged in OUT (final
greedy success or return against the task's threshold, k of N seeds per task, learner and core).

    python benchmarks/presets_evidence.py run MiniGrid-MemoryS7-v0:urlstm:1-10 --jobs 2 --until 10:50
    python benchmarks/presets_evidence.py run urlstm/TMazePassive-v0:urlstm:1-3:impala
    python benchmarks/presets_evidence.py table --md docs/results/presets.md

``run`` starts each command under ``nice -n 19`` (the machine may be shared) and stops the runs still
going at --until (HH:MM, local time), which the table reports as not finished. It skips a run whose
log already exists. ``table`` prints one JSON object (the CPU, every run) and writes the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "presets-evidence")
sys.path.insert(0, ROOT)

# task -> (what is compared, threshold): the success rate of the final greedy evaluation (100
# episodes), or its mean return where the task has no success
THRESHOLDS = {
    "MiniGrid-MemoryS7-v0": ("success", 0.9),
    "MiniGrid-MemoryS9-v0": ("success", 0.9),
    "urlstm/VisualMatchPassive-v0": ("success", 0.9),
    "urlstm/TMazePassive-v0": ("success", 0.9),
    "urlstm/MemoryChain-v0": ("success", 0.9),
    "urlstm/TMazeActive-v0": ("success", 0.9),
    "popgym-RepeatPreviousEasy-v0": ("return", 0.9),
    "popgym-RepeatFirstEasy-v0": ("return", 0.9),
    "popgym-CountRecallEasy-v0": ("return", 0.9),
    "popgym-PositionOnlyCartPoleEasy-v0": ("return", 0.9),
    # 1 + R / 1627 for Pendulum's own return R: 0.8 is R = -325 (a random policy 0.26)
    "popgym-PositionOnlyPendulumEasy-v0": ("return", 0.8),
    "CartPole-v1": ("return", 475.0),  # gymnasium's reward_threshold for the id
}


def parse_job(text: str) -> list[tuple[str, str, int, str]]:
    """"ENV:CORE:SEEDS[:ALGO]" (seeds "1-10" or "1,2,5"; algo ppo or impala, default ppo)
    -> [(env, core, seed, algo), ...]."""
    algo = "ppo"
    if text.endswith((":ppo", ":impala")):
        text, algo = text.rsplit(":", 1)
    env, core, seeds = text.rsplit(":", 2)
    if "-" in seeds:
        lo, hi = seeds.split("-")
        numbers = list(range(int(lo), int(hi) + 1))
    else:
        numbers = [int(s) for s in seeds.split(",")]
    return [(env, core, s, algo) for s in numbers]


def command(env: str, core: str, seed: int, algo: str = "ppo") -> list[str]:
    """The plain command: the env and the seed, --core only for another core than the default,
    --algo only for another learner than the default."""
    return (["python", "train.py"] + ([] if algo == "ppo" else ["--algo", algo]) + ["--env", env, "--seed", str(seed)]
            + ([] if core == "urlstm" else ["--core", core]))


def log_name(env: str, core: str, seed: int, algo: str = "ppo") -> str:
    return os.path.join(OUT, f"{env.replace('/', '-')}__{core}{'' if algo == 'ppo' else '__' + algo}__s{seed}.log")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def run(jobs: list[tuple[str, str, int]], parallel: int, until: float, others: list[int]) -> None:
    """Run ``jobs`` at most ``parallel`` at a time, counting the processes ``others`` while alive."""
    os.makedirs(OUT, exist_ok=True)
    queue = [j for j in jobs if not os.path.exists(log_name(*j))]
    running: dict[subprocess.Popen, tuple] = {}
    while queue or running:
        others = [pid for pid in others if _alive(pid)]
        for proc, job in list(running.items()):
            if proc.poll() is not None:
                _finish(job, proc.returncode, killed=False)
                del running[proc]
        if time.time() >= until:
            for proc, job in running.items():
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the run saves a checkpoint and stops
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                _finish(job, proc.returncode, killed=True)
            for job in queue:
                print(f"not started (deadline): {' '.join(command(*job))}", flush=True)
            return
        while queue and len(running) + len(others) < parallel:
            job = queue.pop(0)
            with open(log_name(*job), "w") as log:
                proc = subprocess.Popen(["nice", "-n", "19", sys.executable, *command(*job)[1:]], cwd=ROOT,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            _side(job, {"command": " ".join(command(*job)), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "load_start": os.getloadavg()[0]})
            running[proc] = job
            print(f"started: {' '.join(command(*job))}", flush=True)
        time.sleep(5)


def _side(job: tuple, data: dict) -> None:
    path = log_name(*job)[:-4] + ".json"
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    with open(path, "w") as f:
        json.dump({**old, **data}, f)


def _finish(job: tuple, code: int, killed: bool) -> None:
    _side(job, {"ended": time.strftime("%Y-%m-%d %H:%M:%S"), "load_end": os.getloadavg()[0],
                "exit_code": code, "killed_at_deadline": killed})
    print(f"{'killed at the deadline' if killed else f'ended ({code})'}: {' '.join(command(*job))}", flush=True)


def collect() -> list[dict]:
    """Every logged run: its command, the run folder's summary.json and the sidecar's times and load."""
    from agents.logger import read_json

    rows = []
    for name in sorted(os.listdir(OUT)) if os.path.isdir(OUT) else []:
        m = re.fullmatch(r"(.+?)__([^_]+)(?:__(impala))?__s(\d+)\.log", name)
        if not m:
            continue
        algo = m.group(3) or "ppo"
        seed = int(m.group(4))
        with open(os.path.join(OUT, name), errors="replace") as f:
            text = f.read()
        first = text.splitlines()[0] if text else ""
        folder = re.search(r"run folder (\S+)", text)
        summary = read_json(os.path.join(ROOT, folder.group(1), "summary.json")) if folder else None
        side = read_json(os.path.join(OUT, name[:-4] + ".json")) or {}
        env = summary["env"] if summary else next((e for e in THRESHOLDS if e.replace("/", "-") == m.group(1)),
                                                   m.group(1))
        rows.append({"env": env, "core": m.group(2), "seed": seed, "algo": algo, "preset_line": first,
                     "command": " ".join(command(env, m.group(2), seed, algo)),
                     "run_dir": folder.group(1) if folder else None, "summary": summary, **side})
    return rows


def verdict(row: dict) -> tuple[str, bool | None]:
    """(the final greedy figure, reached the threshold?); None when the run did not finish."""
    s = row["summary"]
    if s is None or not s.get("status", "").startswith("finished") or not s.get("final_eval_episodes"):
        return "not finished", None
    metric, threshold = THRESHOLDS.get(row["env"], ("success", 0.9))
    value = s["final_success_rate"] if metric == "success" else s["final_return"]
    if value is None:
        return "n/a", None
    return f"{metric} {value:.2f}", value >= threshold


def table(rows: list[dict]) -> str:
    lines = [("| task | learner | core | seed | budget (steps) | final greedy (100 episodes) | >= threshold | "
              "wall time (SPS) | load (1-min, start/end) |"), "|---|---|---|---|---:|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list] = {}
    for r in sorted(rows, key=lambda r: (r["env"], r["algo"], r["core"], r["seed"])):
        figure, ok = verdict(r)
        s = r["summary"] or {}
        wall = s.get("wall_time_s")
        time_text = (f"{int(wall // 60)}m{int(wall % 60):02d}s ({s.get('sps', 0):,.0f})" if wall else "-")
        load = (f"{r['load_start']:.1f} / {r['load_end']:.1f}" if "load_end" in r else "-")
        budget = f"{s['total_steps']:,}" if s.get("total_steps") else "-"
        mark = {True: "yes", False: "no", None: "-"}[ok]
        lines.append(f"| `{r['env']}` | {r['algo']} | `{r['core']}` | {r['seed']} | {budget} | {figure} | {mark} | "
                     f"{time_text} | {load} |")
        groups.setdefault((r["env"], r["algo"], r["core"]), []).append(ok)
    lines += ["", "| task | learner | core | threshold | seeds reaching it (k of N finished) | not finished |",
              "|---|---|---|---|---|---|"]
    for (env, algo, core), oks in sorted(groups.items()):
        metric, threshold = THRESHOLDS.get(env, ("success", 0.9))
        done = [o for o in oks if o is not None]
        lines.append(f"| `{env}` | {algo} | `{core}` | {metric} >= {threshold} | {sum(done)} of {len(done)} | "
                     f"{len(oks) - len(done)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the plain commands")
    r.add_argument("jobs", nargs="+", help="ENV:CORE:SEEDS, e.g. MiniGrid-MemoryS7-v0:urlstm:1-10")
    r.add_argument("--jobs", dest="parallel", type=int, default=2, help="runs at a time (default: 2)")
    r.add_argument("--until", default=None, help="HH:MM: stop the runs still going then")
    r.add_argument("--wait-for", default="", help="comma-separated ids of runs started otherwise: "
                   "each holds a slot while it lives")
    t = sub.add_parser("table", help="print the runs as JSON and write the markdown table")
    t.add_argument("--md", default=None, help="write the table to this file between the evidence markers")
    args = parser.parse_args()
    if args.cmd == "run":
        until = float("inf")
        if args.until:
            hh, mm = map(int, args.until.split(":"))
            now = time.localtime()
            until = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, -1))
        others = [int(p) for p in args.wait_for.split(",") if p]
        run([j for text in args.jobs for j in parse_job(text)], args.parallel, until, others)
        return
    from policies.cores.cpu import cpu_info

    rows = collect()
    print(json.dumps({"cpu": cpu_info(), "runs": rows}, default=str))
    if args.md:
        with open(args.md) as f:
            md = f.read()
        start, end = "<!-- evidence table: benchmarks/presets_evidence.py table -->", "<!-- end of evidence table -->"
        head, _, rest = md.partition(start)
        _, _, tail = rest.partition(end)
        with open(args.md, "w") as f:
            f.write(f"{head}{start}\n{table(rows)}{end}{tail}")


if __name__ == "__main__":
    main()
