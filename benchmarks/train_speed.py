"""Training speed of the PPO learner: SPS, the share of time in env, inference and learning, and
its roofline.

    python benchmarks/train_speed.py                      # UR-LSTM, batched passive T-maze, 256 envs
    python benchmarks/train_speed.py --core lstm --num-envs 64 --updates 10

Runs ``agents.ppo.train`` for a warm-up update, then for ``--updates`` measured updates, and prints
one JSON object: steps per second over the measured updates and where the time went. On CPU the
``roofline`` block (``benchmarks/roofline.py``) adds the FLOPs per env step (matrix products), the
float32 GEMM rate measured in the same run on 1 and 2 threads, and the share of it the run reached.
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

from agents import commands, ppo, runfolder, runloop  # noqa: E402
from agents.config import TrainConfig, parse_kwargs  # noqa: E402
from benchmarks import roofline  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402


def measure(cfg: TrainConfig, updates: int, warmup: int = 1, with_roofline: bool = False) -> dict:
    """Train for warmup + updates updates; SPS and time shares over the measured ones (and, with
    ``with_roofline``, the ``roofline`` block: FLOPs counted before training, GEMMs timed after)."""
    device = runfolder.resolve_device(cfg.device)
    runfolder.seed_everything(cfg.seed)
    venv = commands.make_env(cfg)
    policy = commands.make_policy(cfg, venv, device)
    if with_roofline:
        flops, shapes = roofline.flops_per_step(policy, cfg), roofline.gemm_shapes(policy, cfg)
    marks: list[tuple[float, int]] = []

    def on_progress(p: dict) -> None:
        marks.append((time.perf_counter(), p["step"]))

    with tempfile.TemporaryDirectory() as logdir:
        cfg = TrainConfig(**{**cfg.to_dict(), "total_steps": (warmup + updates) * cfg.batch_size,
                             "logdir": logdir, "eval_episodes": 0, "progress": False,
                             "save_every": 10**9})
        from agents.logger import make_run_dir
        run_dir = make_run_dir(logdir, cfg.env, cfg.core, cfg.seed)
        # timers: capture the per-update values before train() logs and resets them
        per_update: list[dict] = []
        orig_log = runloop.log_scalars

        def log(logger, policy, step, update_idx, cfg_, episodes, losses, timers, sps, lr):
            per_update.append({"env": timers.env, "inference": timers.inference, "learn": timers.learn})
            orig_log(logger, policy, step, update_idx, cfg_, episodes, losses, timers, sps, lr)

        runloop.log_scalars = log
        try:
            summary = ppo.train(cfg, venv, policy, run_dir, device, on_progress=on_progress)
        finally:
            runloop.log_scalars = orig_log
            venv.close()
    (t0, s0), (t1, s1) = marks[warmup - 1], marks[-1]
    measured = per_update[warmup:]
    parts = {k: sum(u[k] for u in measured) for k in ("env", "inference", "learn")}
    total = t1 - t0
    parts["other"] = max(0.0, total - sum(parts.values()))
    result = {
        "sps": round((s1 - s0) / total, 1),
        "steps_measured": s1 - s0,
        "seconds_measured": round(total, 2),
        "share": {k: round(v / total, 3) for k, v in parts.items()},
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        "train_success_rate": summary["train_success_rate"],
    }
    if with_roofline:
        result["roofline"] = roofline.roofline(flops, roofline.gemm_peaks(shapes), result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="urlstm/TMazePassive-v0")
    parser.add_argument("--env-kwargs", nargs="*", default=["length=100"], metavar="KEY=VALUE")
    parser.add_argument("--core", default="urlstm")
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=101)
    parser.add_argument("--seq-len", type=int, default=None, help="default: num-steps")
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--update-epochs", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--updates", type=int, default=10, help="measured updates")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-roofline", action="store_true",
                        help="skip the roofline block (FLOP count and GEMM timing: 5 to 20 s here; CPU only)")
    args = parser.parse_args()
    cfg = TrainConfig(env=args.env, env_kwargs=parse_kwargs(args.env_kwargs), core=args.core,
                      num_envs=args.num_envs, num_steps=args.num_steps, seq_len=args.seq_len or args.num_steps,
                      num_minibatches=args.num_minibatches, update_epochs=args.update_epochs,
                      hidden_size=args.hidden_size, torch_threads=args.torch_threads, device=args.device,
                      progress=False)
    torch.set_num_threads(args.torch_threads)
    result = measure(cfg, args.updates, with_roofline=cfg.device == "cpu" and not args.no_roofline)
    print(json.dumps({
        "benchmark": "train_speed", "env": cfg.env, "env_kwargs": cfg.env_kwargs, "core": cfg.core,
        "num_envs": cfg.num_envs, "num_steps": cfg.num_steps, "seq_len": cfg.seq_len,
        "num_minibatches": cfg.num_minibatches, "update_epochs": cfg.update_epochs,
        "hidden_size": cfg.hidden_size, "torch_threads": torch.get_num_threads(), "device": cfg.device,
        **result,
        "machine": {"cpu": cpu_info(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
