"""Seconds of a final evaluation, the old way and the current one, side by side in one process.

The case: 100 greedy episodes of MiniGrid-MemoryS9-v0 with the default UR-LSTM agent, untrained
(as after a 512-step run: nearly every episode runs to MiniGrid's 405-step limit).
- ``per_env_quota_4_async``: what evaluation did before, 4 envs (the run's ``--num-envs``) in 4
  worker processes, 25 episodes in a row each;
- ``one_env_per_episode_sync``: the current default, 100 envs in this process, one episode each.

Wall-clock and this process's CPU seconds (worker processes not included) are printed as JSON with
the CPU, the torch threads and the load average before and after (the machine may be shared).

    python benchmarks/evaluate.py [--episodes 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch
from policies.cores.kernels import cpu_info  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from agents.config import TrainConfig  # noqa: E402
from agents.evaluate import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="MiniGrid-MemoryS9-v0")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=TrainConfig.torch_threads,
                    help="torch threads, as train.py's --torch-threads (default: its default; 0: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(env=args.env, env_kwargs={}, num_envs=4, device="cpu", progress=False)
    torch.manual_seed(cfg.seed)
    probe = train.make_env(cfg, num_envs=1)
    policy = train.make_policy(cfg, probe, torch.device("cpu")).eval()
    probe.close()
    old = dataclasses.replace(cfg, env_kwargs={"vectorization": "async"})
    cases = {"per_env_quota_4_async": (old, 4), "one_env_per_episode_sync": (cfg, None)}
    load_before = os.getloadavg()
    out = {}
    for name, (c, n) in cases.items():
        w, p = time.perf_counter(), time.process_time()
        r = evaluate(policy, c, torch.device("cpu"), episodes=args.episodes, greedy=True, num_envs=n)
        out[name] = {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - p, 2),
                     "num_envs": r["num_envs"], "episodes": r["episodes"], "length_mean": r["length_mean"]}
    print(json.dumps({"env": args.env, "episodes": args.episodes, "results": out,
                      "machine": {"cpu": cpu_info(), "torch_threads": torch.get_num_threads(),
                                  "loadavg_before": [round(x, 2) for x in load_before],
                                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
                      "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
