"""Scale-out speed on one machine: IMPALA with Ray actors against the local actor processes, PPO
with 2 torchrun ranks against 1, and Ray's start-up time. One run, one JSON object.

    python benchmarks/scale.py                          # everything, default budgets
    python benchmarks/scale.py --only ray_startup --out result.json

* ``impala``: for MiniGrid-MemoryS7 and the batched T-maze (length 100), IMPALA with 2 actors of
  4 envs each, learner batch 1, the same seed and step budget, once with ``--actors local`` and
  once with ``--actors ray`` (a private Ray instance started by the run: its start-up is in the
  end-to-end figure, not in the steady one). SPS end to end (from the start of ``train()``) and
  steady (from the first finished update to the last). Each setting runs ``--repeats`` times,
  the two transports in alternating order; the medians are compared.
* ``ppo``: ``torchrun --standalone --nproc_per_node N train.py`` for N = 1 and 2 on the default
  T-maze (32 envs in all, 102 steps, the default network), SPS from summary.json (all ranks'
  steps over rank 0's training time) and the wall time of the whole command.
* ``ray_startup``: ``ray.init`` of a private instance, two actors answering their first call, and
  ``ray.shutdown``, in seconds.

The load average (``os.getloadavg()``) is recorded before and after each measurement: on a shared
machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from agents import (  # noqa: E402
    commands,
    impala,
    runfolder,
)
from agents.config import TrainConfig  # noqa: E402
from agents.logger import make_run_dir  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402

TASKS = {
    "minigrid": dict(env="MiniGrid-MemoryS7-v0", env_kwargs={}, unroll_length=128),
    "tmaze": dict(env="urlstm/TMazePassive-v0", env_kwargs={"length": 100}, unroll_length=101),
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def impala_run(cfg: TrainConfig) -> dict:
    """One IMPALA run in this process; SPS end to end and steady."""
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.torch_threads)
    runfolder.seed_everything(cfg.seed)
    venv = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, venv, device)
    marks: list[tuple[float, int]] = []
    before = load()
    with tempfile.TemporaryDirectory() as logdir:
        run_dir = make_run_dir(logdir, cfg.env, cfg.core, cfg.seed)
        t0 = time.perf_counter()
        try:
            s = impala.train(cfg, venv, policy, run_dir, device,
                             on_progress=lambda p: marks.append((time.perf_counter(), p["step"])))
        finally:
            venv.close()
        wall = time.perf_counter() - t0
    (t1, s1), (t2, s2) = marks[0], marks[-1]
    return {"actors": cfg.actors, "status": s["status"], "steps": s["total_steps"],
            "wall_s": round(wall, 2), "sps_end_to_end": round(s["total_steps"] / wall, 1),
            "sps_steady": round((s2 - s1) / (t2 - t1), 1) if t2 > t1 else None,
            "policy_lag_mean": s["policy_lag_mean"], "actor_restarts": s["actor_restarts"],
            "loadavg_before": before, "loadavg_after": load()}


def ppo_run(nproc: int, steps: int) -> dict:
    """``torchrun --nproc_per_node nproc train.py`` on the default T-maze; its summary's SPS."""
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), os.path.join(ROOT, "train.py"), "--total-steps", str(steps),
               "--eval-episodes", "0", "--no-progress", "--device", "cpu", "--no-anneal-lr",
               "--logdir", logdir, "--run-name", "r"]
        before = load()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
        with open(os.path.join(logdir, "r", "summary.json")) as f:
            s = json.load(f)
    return {"ranks": nproc, "envs_per_rank": 32 // nproc, "steps": s["total_steps"],
            "sps": s["sps"], "train_wall_s": s["wall_time_s"], "command_wall_s": round(wall, 2),
            "loadavg_before": before, "loadavg_after": load()}


def ray_startup() -> dict:
    """Seconds to start a private Ray instance, get two actors' first answers, and shut down."""
    import ray

    from agents.ray_actors import init_ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already running in this process")
    before = load()

    class Probe:
        def pid(self) -> int:
            return os.getpid()

    t0 = time.perf_counter()
    init_ray(None, 2)
    t1 = time.perf_counter()
    probes = [ray.remote(num_cpus=1)(Probe).remote() for _ in range(2)]
    ray.get([p.pid.remote() for p in probes])
    t2 = time.perf_counter()
    ray.shutdown()
    t3 = time.perf_counter()
    return {"ray": ray.__version__, "init_s": round(t1 - t0, 2),
            "two_actors_first_answer_s": round(t2 - t1, 2), "shutdown_s": round(t3 - t2, 2),
            "loadavg_before": before, "loadavg_after": load()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("impala", "ppo", "ray_startup"),
                        default=["ray_startup", "impala", "ppo"])
    parser.add_argument("--core", default="urlstm")
    parser.add_argument("--steps-minigrid", type=int, default=40_000)
    parser.add_argument("--steps-tmaze", type=int, default=80_000)
    parser.add_argument("--steps-ppo", type=int, default=32 * 102 * 8, help="8 updates by default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each setting, in alternating order (medians reported)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    result = {"cpu": cpu_info(), "torch": torch.__version__, "python": platform.python_version(),
              "cuda": torch.cuda.is_available(), "nice": os.nice(0), "loadavg_start": load()}
    if "ray_startup" in args.only:
        result["ray_startup"] = ray_startup()
        print(json.dumps({"ray_startup": result["ray_startup"]}), file=sys.stderr, flush=True)
    if "impala" in args.only:
        result["impala"] = {}
        for task, spec in TASKS.items():
            steps = args.steps_minigrid if task == "minigrid" else args.steps_tmaze
            runs: dict[str, list] = {"local": [], "ray": []}
            for r in range(args.repeats):  # alternating order: the load drifts during a run
                for actors in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                    cfg = TrainConfig(algo="impala", actors=actors, env=spec["env"],
                                      env_kwargs=spec["env_kwargs"], core=args.core, num_envs=8,
                                      num_actors=2, unroll_length=spec["unroll_length"],
                                      learner_batch=1, total_steps=steps, eval_episodes=0,
                                      progress=False, save_every=10**9, device="cpu",
                                      anneal_lr=False, seed=args.seed)
                    runs[actors].append(impala_run(cfg))
                    print(json.dumps({task: {actors: runs[actors][-1]}}), file=sys.stderr,
                          flush=True)
            med = {a: median([x["sps_steady"] for x in runs[a]]) for a in runs}
            result["impala"][task] = {
                "env": spec["env"], "env_kwargs": spec["env_kwargs"], "num_actors": 2,
                "envs_per_actor": 4, "runs": runs, "median_sps_steady": med,
                "ray_over_local_steady": round(med["ray"] / med["local"], 2)}
    if "ppo" in args.only:
        runs = {"1": [], "2": []}
        for r in range(args.repeats):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                runs[str(n)].append(ppo_run(n, args.steps_ppo))
                print(json.dumps({"ppo": runs[str(n)][-1]}), file=sys.stderr, flush=True)
        med = {n: median([x["sps"] for x in runs[n]]) for n in runs}
        result["ppo"] = {"env": TrainConfig.env, "env_kwargs": TrainConfig().env_kwargs,
                         "num_envs": 32, "runs_by_ranks": runs, "median_sps_by_ranks": med,
                         "two_over_one": round(med["2"] / med["1"], 2)}
    result["loadavg_end"] = load()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
