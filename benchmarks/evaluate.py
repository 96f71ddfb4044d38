"""Seconds of a final evaluation, the old ways and the current one, side by side in one process;
then the wall-clock seconds of the whole short run whose evaluation this is.

The case: 100 greedy episodes of MiniGrid-MemoryS9-v0 with the default UR-LSTM agent, untrained
(as after a 512-step run: nearly every episode runs to MiniGrid's 405-step limit).
- ``per_env_quota_4_async``: what evaluation first did, 4 envs (the run's ``--num-envs``) in 4
  worker processes, 25 episodes in a row each;
- ``one_env_per_episode_sync``: 100 envs, one episode each, all in this process;
- ``one_env_per_episode_shards``: the current default, the same 100 envs in slices over this
  process and ``envs.sharded`` workers (one slice per usable core).
The cases alternate for ``--rounds`` rounds (the median is reported with every round), and
``python train.py --env MiniGrid-MemoryS9-v0 --num-envs 4 --total-steps 512`` (training, the final
evaluation, start-up and exit) is timed ``--rounds`` times as a subprocess.

Printed as JSON: wall-clock and this process's CPU seconds (worker processes not included), the
CPU, the torch threads and the load average before and after (the machine may be shared).

    python benchmarks/evaluate.py [--episodes 100] [--threads 1] [--rounds 3] [--no-run]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agents import commands
from agents import evaluate as ev  # noqa: E402
from agents.config import TrainConfig  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="MiniGrid-MemoryS9-v0")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=TrainConfig.torch_threads,
                    help="torch threads, as train.py's --torch-threads (default: its default; 0: torch's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-run", dest="run", action="store_false", help="skip timing the whole train.py run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(env=args.env, env_kwargs={}, num_envs=4, device="cpu", progress=False)
    torch.manual_seed(cfg.seed)
    probe = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, probe, torch.device("cpu")).eval()
    probe.close()
    old = dataclasses.replace(cfg, env_kwargs={"vectorization": "async"})
    one_process = ev.ENVS_PER_WORKER
    # name -> (config, envs, envs per slice: more than the episodes keeps them in one process)
    cases = {"per_env_quota_4_async": (old, 4, one_process),
             "one_env_per_episode_sync": (cfg, None, args.episodes + 1),
             "one_env_per_episode_shards": (cfg, None, one_process)}
    load_before = os.getloadavg()
    rounds: dict[str, list] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (c, n, per_slice) in cases.items():
            ev.ENVS_PER_WORKER = per_slice
            w, p = time.perf_counter(), time.process_time()
            r = ev.evaluate(policy, c, torch.device("cpu"), episodes=args.episodes, greedy=True, num_envs=n)
            rounds[name].append({"wall_s": round(time.perf_counter() - w, 2),
                                 "cpu_s": round(time.process_time() - p, 2), "num_envs": r["num_envs"],
                                 "episodes": r["episodes"], "length_mean": r["length_mean"]})
    ev.ENVS_PER_WORKER = one_process
    out = {name: {"median_wall_s": statistics.median(x["wall_s"] for x in rs), "rounds": rs}
           for name, rs in rounds.items()}
    if args.run:
        command = [sys.executable, "train.py", "--env", args.env, "--num-envs", "4", "--total-steps", "512",
                   "--no-progress"]
        walls = []
        with tempfile.TemporaryDirectory() as logdir:
            for _ in range(args.rounds):
                w = time.perf_counter()
                subprocess.run(command + ["--logdir", logdir], cwd=ROOT, check=True, capture_output=True)
                walls.append(round(time.perf_counter() - w, 2))
        out["train_py_512_steps"] = {"command": " ".join(["python"] + command[1:]),
                                     "median_wall_s": statistics.median(walls), "wall_s": walls}
    print(json.dumps({"env": args.env, "episodes": args.episodes, "rounds": args.rounds, "results": out,
                      "machine": {"cpu": cpu_info(), "torch_threads": torch.get_num_threads(),
                                  "loadavg_before": [round(x, 2) for x in load_before],
                                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
                      "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
