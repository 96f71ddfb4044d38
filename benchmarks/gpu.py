"""Speed of the UR cores on a CUDA GPU: the Triton scans against cuDNN's LSTM, and PPO on GPU vs CPU.

    python benchmarks/gpu.py                 # everything, under 5 minutes on an H100-class GPU
    python benchmarks/gpu.py --skip-ppo --budget-s 120
    python benchmarks/gpu.py --no-autotune    # one compilation per kernel: more items within the budget

Prints one JSON object: the GPU, CPU, torch and triton versions; for T128/B256/D128/H256,
T128/B64/D64/H128 and T1024/B16/D128/H256 in float32 and bfloat16 the forward and forward+backward
milliseconds (median of CUDA-event timings, after a warm-up that includes Triton's autotuning) of
``urlstm``, ``urgru`` and ``lstm:--`` (Triton kernels), of ``urlstm`` on the Python scan (float32,
the path before the kernels) and of torch.nn.LSTM (cuDNN), each with its ratio to cuDNN; and PPO's
steps per second on the batched passive T-maze with 1024 environments, ``--device cuda`` against
``--device cpu``. Items that would start after ``--budget-s`` are listed as skipped; each core's
``first_call_s`` is its first forward+backward, Triton's compilation and autotuning included.
Without CUDA it exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SHAPES = [(128, 256, 128, 256), (128, 64, 64, 128), (1024, 16, 128, 256)]  # T, B, D, H
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TRITON_CORES = ("urlstm", "urgru", "lstm:--")
DEVICE = "cuda"


def timed(fn, budget_s: float = 1.5) -> float:
    """Median milliseconds of fn() by CUDA events, after two warm-up calls."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    reps = max(3, min(20, int(budget_s / max(time.perf_counter() - t0, 1e-4))))
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def core_times(module, x: torch.Tensor) -> dict:
    """Forward and forward+backward milliseconds of module(x) (parameters require gradients)."""
    params = [p for p in module.parameters() if p.requires_grad]

    def fwd():
        module(x)

    def fwd_bwd():
        for p in params:
            p.grad = None
        y, _ = module(x)
        y.backward(torch.ones_like(y))

    t0 = time.perf_counter()
    fwd_bwd()  # the first call compiles (and autotunes) the Triton kernels of this shape's key
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    return {"fwd_ms": timed(fwd), "fwd_bwd_ms": timed(fwd_bwd), "first_call_s": round(first, 2)}


def python_scan(enabled: bool) -> None:
    """Route the grid cores to the Python scan (the path without the Triton kernels) or back."""
    from policies.cores import triton_scan

    if enabled:
        triton_scan._STATE["ok"] = False
    else:
        triton_scan._STATE.pop("ok", None)


def bench_shape(T: int, B: int, D: int, H: int, dtype_name: str, with_python: bool) -> dict:
    from policies.cores import make_core, triton_scan

    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    x = torch.randn(T, B, D, device=DEVICE, dtype=dtype)
    out = {"T": T, "B": B, "D": D, "H": H, "dtype": dtype_name}
    cudnn = torch.nn.LSTM(D, H).to(DEVICE, dtype)
    out["nn.LSTM (cuDNN)"] = core_times(cudnn, x)
    base = out["nn.LSTM (cuDNN)"]
    runs = [(spec, "triton" if triton_scan.usable(x, H) else "python") for spec in TRITON_CORES]
    if with_python:
        runs.append(("urlstm", "python"))
    for spec, kernel in runs:
        core = make_core(spec, D, H).to(DEVICE, dtype)
        python_scan(kernel == "python")
        try:
            t = core_times(core, x)
        finally:
            python_scan(False)
        t["kernel"] = kernel
        t["fwd_ratio_to_cudnn"] = round(t["fwd_ms"] / base["fwd_ms"], 2)
        t["fwd_bwd_ratio_to_cudnn"] = round(t["fwd_bwd_ms"] / base["fwd_bwd_ms"], 2)
        out[f"{spec} ({kernel})"] = t
    return out


def bench_ppo(device: str, updates: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_speed

    from agents.config import TrainConfig

    threads = os.cpu_count() or 1
    cfg = TrainConfig(env="urlstm/TMazePassive-v0", env_kwargs={"length": 100}, core="urlstm", num_envs=1024,
                      num_steps=101, seq_len=101, num_minibatches=4, update_epochs=4, hidden_size=128,
                      torch_threads=threads, device=device, progress=False)
    torch.set_num_threads(threads)
    result = train_speed.measure(cfg, updates)
    return {"device": device, "env": cfg.env, "env_kwargs": cfg.env_kwargs, "num_envs": cfg.num_envs,
            "num_steps": cfg.num_steps, "torch_threads": threads, "updates_measured": updates,
            "sps": result["sps"], "share": result["share"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="start no new item after this many seconds (an item takes up to about a minute)")
    parser.add_argument("--skip-ppo", action="store_true", help="only the kernel timings")
    parser.add_argument("--ppo-updates", type=int, default=2, help="measured PPO updates per device")
    parser.add_argument("--no-autotune", action="store_true",
                        help="one configuration per kernel (URLSTM_TRITON_AUTOTUNE=0): fewer compilations")
    parser.add_argument("--tf32", action="store_true",
                        help="torch.set_float32_matmul_precision('high'): the float32 Triton products on TF32 "
                             "tensor cores, as cuDNN's LSTM runs by default (torch.backends.cudnn.allow_tf32)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ", ".join(DTYPES))
    args = parser.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        print(f"benchmarks/gpu.py: --dtypes takes a subset of {', '.join(DTYPES)}, got {args.dtypes!r}",
              file=sys.stderr)
        return 2
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if args.no_autotune:
        os.environ["URLSTM_TRITON_AUTOTUNE"] = "0"
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.budget_s <= 0 or args.ppo_updates < 1:
        print("benchmarks/gpu.py: --budget-s must be > 0 and --ppo-updates >= 1", file=sys.stderr)
        return 2
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from policies.cores.cpu import cpu_info

    start = time.perf_counter()
    tasks = [(f"T{T}/B{B}/D{D}/H{H} {dt}", lambda T=T, B=B, D=D, H=H, dt=dt: bench_shape(
        T, B, D, H, dt, with_python=dt == "float32")) for (T, B, D, H) in SHAPES[:1] for dt in dtypes[:1]]
    if not args.skip_ppo:
        tasks += [(f"ppo {d}", lambda d=d: bench_ppo(d, args.ppo_updates)) for d in ("cuda", "cpu")]
    tasks += [(f"T{T}/B{B}/D{D}/H{H} {dt}", lambda T=T, B=B, D=D, H=H, dt=dt: bench_shape(
        T, B, D, H, dt, with_python=dt == "float32")) for (T, B, D, H) in SHAPES for dt in dtypes
        if (T, B, D, H, dt) != (*SHAPES[0], dtypes[0])]
    results, skipped, failed = [], [], {}
    for name, task in tasks:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(name)
            continue
        t0 = time.perf_counter()
        try:
            item = task()
        except Exception as err:  # noqa: BLE001  (one failing item must not lose the others' figures)
            failed[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            continue
        item["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(item)
    ppo = {r["device"]: r["sps"] for r in results if "sps" in r}
    if len(ppo) == 2:
        results.append({"ppo_sps_ratio_cuda_to_cpu": round(ppo["cuda"] / ppo["cpu"], 2)})
    print(json.dumps({
        "benchmark": "gpu", "gpu": torch.cuda.get_device_name(), "cpu": cpu_info(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton_version,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "triton_autotune": os.environ.get("URLSTM_TRITON_AUTOTUNE", "1") != "0",
        "results": results, "skipped_for_time": skipped, "failed": failed,
        "total_s": round(time.perf_counter() - start, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
