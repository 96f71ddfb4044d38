"""Training speed of IMPALA next to PPO: same network (UR-LSTM by default), same envs, one run each.

    python benchmarks/impala_vs_ppo.py                          # MiniGrid-MemoryS7 and T-maze 100
    python benchmarks/impala_vs_ppo.py --tasks tmaze --steps-tmaze 500000 --out result.json

For each task, PPO (its default vector env: worker processes for MiniGrid, the batched native env
for the T-maze) and IMPALA (``--num-actors`` actor processes, each with in-process envs; by default
4 envs per actor and learner batch 1, as ``train.py --algo impala``: the small batches that learn)
and IMPALA with the APPO loss (``--pg-loss clipped``, 4 epochs x 4 minibatches per batch, the PPO
envs in ``--appo-num-actors`` actors, learner batch 1: the settings that learn MiniGrid-MemoryS7)
train for a fixed number of env steps without evaluation. Reported per run: end-to-end SPS (wall
clock from the start of ``train()``, actor start-up included) and steady SPS (from the first
finished update to the last). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from agents import commands, impala, ppo, runfolder  # noqa: E402
from agents.config import (
    IMPALA_ENVS_PER_ACTOR,
    TrainConfig,  # noqa: E402
)
from agents.logger import make_run_dir  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402

TASKS = {
    # PPO: num_steps = unroll_length; IMPALA: the same envs split over the actors
    "minigrid": dict(env="MiniGrid-MemoryS7-v0", env_kwargs={}, num_envs=16, num_steps=128,
                     seq_len=128, unroll_length=128),
    "tmaze": dict(env="urlstm/TMazePassive-v0", env_kwargs={"length": 100}, num_envs=32,
                  num_steps=101, seq_len=101, unroll_length=101),
}


def measure(cfg: TrainConfig) -> dict:
    """One training run of ``cfg`` (ppo or impala); SPS end to end and from first to last update."""
    device = runfolder.resolve_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)  # as train.py does (one thread by default)
    runfolder.seed_everything(cfg.seed)
    venv = commands.make_env(cfg, num_envs=1 if cfg.algo == "impala" else None)
    policy = commands.make_policy(cfg, venv, device)
    marks: list[tuple[float, int]] = []
    learner = impala.train if cfg.algo == "impala" else ppo.train
    with tempfile.TemporaryDirectory() as logdir:
        run_dir = make_run_dir(logdir, cfg.env, cfg.core, cfg.seed)
        t0 = time.perf_counter()
        try:
            summary = learner(cfg, venv, policy, run_dir, device,
                              on_progress=lambda p: marks.append((time.perf_counter(), p["step"])))
        finally:
            venv.close()
        wall = time.perf_counter() - t0
    (t_first, s_first), (t_last, s_last) = marks[0], marks[-1]
    return {
        "algo": cfg.algo, "num_envs": cfg.num_envs, "status": summary["status"],
        "steps": summary["total_steps"],
        "updates": summary["updates"], "wall_s": round(wall, 2),
        "sps_end_to_end": round(summary["total_steps"] / wall, 1),
        "sps_steady": (round((s_last - s_first) / (t_last - t_first), 1) if t_last > t_first
                       else None),
        "steps_per_update": cfg.batch_size, "perf_s": summary.get("perf_s"),
        "policy_lag_mean": summary.get("policy_lag_mean"), "train_return": summary["train_return"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["minigrid", "tmaze"])
    parser.add_argument("--core", default="urlstm")
    parser.add_argument("--steps-minigrid", type=int, default=100_000)
    parser.add_argument("--steps-tmaze", type=int, default=300_000)
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--learner-batch", type=int, default=1)
    parser.add_argument("--impala-num-envs", type=int, default=None,
                        help="IMPALA's envs, all actors together (default: 4 per actor; "
                             "the task's PPO env count gives both the same envs)")
    parser.add_argument("--appo-num-actors", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    result = {"core": args.core, "torch": torch.__version__, "python": platform.python_version(),
              "cpu": cpu_info(), "cuda": torch.cuda.is_available(), "tasks": {}}
    load_before = os.getloadavg()
    for task in args.tasks:
        spec = TASKS[task]
        steps = args.steps_minigrid if task == "minigrid" else args.steps_tmaze
        common = dict(env=spec["env"], env_kwargs=spec["env_kwargs"], core=args.core,
                      total_steps=steps, eval_episodes=0, progress=False, save_every=10**9,
                      device=args.device, anneal_lr=False)
        runs = {}
        runs["ppo"] = measure(TrainConfig(**common, algo="ppo", num_envs=spec["num_envs"],
                                          num_steps=spec["num_steps"], seq_len=spec["seq_len"]))
        impala_envs = args.impala_num_envs or IMPALA_ENVS_PER_ACTOR * args.num_actors
        runs["impala"] = measure(TrainConfig(**common, algo="impala", num_envs=impala_envs,
                                             num_actors=args.num_actors,
                                             unroll_length=spec["unroll_length"],
                                             learner_batch=args.learner_batch))
        runs["appo"] = measure(TrainConfig(**common, algo="impala", num_envs=spec["num_envs"],
                                           num_actors=args.appo_num_actors,
                                           unroll_length=spec["unroll_length"], learner_batch=1,
                                           learner_epochs=4, learner_minibatches=4,
                                           pg_loss="clipped"))
        ppo_sps = runs["ppo"]["sps_steady"]
        for name in ("impala", "appo"):
            sps = runs[name]["sps_steady"]
            runs[f"{name}_over_ppo_steady"] = round(sps / ppo_sps, 2) if ppo_sps and sps else None
        result["tasks"][task] = {"env": spec["env"], "env_kwargs": spec["env_kwargs"], **runs}
        print(json.dumps({task: result["tasks"][task]}), file=sys.stderr, flush=True)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
