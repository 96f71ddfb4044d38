"""Environment steps per second with random actions, printed as JSON.

Native tasks (batched numpy) at 1, 64 and 1024 envs, and MiniGrid-MemoryS7-v0 through
``envs.make`` in-process (SyncVectorEnv, 1 env) and with 1 and 2 worker processes (AsyncVectorEnv),
with the numpy view of ``envs/minigrid_view.py`` (the default) and with MiniGrid's own.
Actions are drawn before timing; each point is the best of ``--repeats`` timed runs of about
``--seconds`` seconds each.

    python benchmarks/envs.py                 # the README table
    python benchmarks/envs.py --seconds 0.2   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402

NATIVE = {
    "urlstm/TMazePassive-v0": {"length": 50},
    "urlstm/TMazeActive-v0": {"length": 50},
    "urlstm/MemoryChain-v0": {"length": 50, "num_bits": 1},
    "urlstm/VisualMatchPassive-v0": {"distractor_steps": 60},
    "urlstm/VisualMatchActive-v0": {"distractor_steps": 60},
}
NUM_ENVS = (1, 64, 1024)


def steps_per_second(venv, seconds: float, repeats: int, block: int = 256) -> float:
    """Best env-steps/s over ``repeats`` runs of whole blocks of pre-drawn random actions."""
    n = venv.num_envs
    venv.action_space.seed(0)
    actions = [venv.action_space.sample() for _ in range(block)]  # drawn before timing
    venv.reset(seed=0)
    for a in actions[:8]:  # warm-up
        venv.step(a)
    best = 0.0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for a in actions:
                venv.step(a)
            steps += block * n
        best = max(best, steps / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (best kept)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the machine may be shared: report how busy it was
    results: dict[str, dict] = {}
    for env_id, kwargs in NATIVE.items():
        row: dict = {"kwargs": kwargs}
        for n in NUM_ENVS:
            venv = envs.make(env_id, n, seed=0, **kwargs)
            row[f"num_envs={n}"] = round(steps_per_second(venv, args.seconds, args.repeats))
            venv.close()
        results[env_id] = row
    row = {"kwargs": {}}
    minigrid = (("in-process", 1, "sync"), ("1 worker", 1, "async"), ("2 workers", 2, "async"))
    for fast_view in (True, False):  # the numpy view (default) and MiniGrid's own, one after the other
        for label, n, vec in minigrid:
            venv = envs.make("MiniGrid-MemoryS7-v0", n, seed=0, vectorization=vec, fast_view=fast_view)
            key = label if fast_view else f"{label}, MiniGrid's own view"
            row[key] = round(steps_per_second(venv, args.seconds, args.repeats, block=64))
            venv.close()
    results["MiniGrid-MemoryS7-v0"] = row
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps({"steps_per_second": results, "machine": machine, **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
