"""Speed of every memory core next to torch.nn.LSTM, measured alternately in one run; prints JSON.

    python benchmarks/cores.py [--reps 15] [--threads 2] [--clock wall|cpu] [--cores lstm,gru,urlstm,...]
                               [--reset-prob 0.1]

For each size and core: median milliseconds per call of forward+backward (train) and forward under
no_grad (infer), and their ratio to torch.nn.LSTM at the same size. Cores are timed round-robin
(one call of each in turn, repeated) so that machine noise hits all of them alike.

``--reset-prob P`` gives every core (not the nn.LSTM baseline, which has no resets) a reset mask
with episode starts drawn with probability P per step and sequence, as in a training minibatch of
short episodes. ``SPEC@segments`` times a core with the compiled loop switched off: ``lstm`` then
runs torch's fused kernel once per stretch between resets (its path on GPU, or where the loop did
not build). ``lstm@loop`` is torch.nn.LSTM's cell in the compiled loop (the ``lstm`` core's path
where resets cut sequences short): four gate blocks, as ``urlstm`` has, where ``lstm:--`` has three
(its input gate is tied to the forget gate), so its recurrent and input GEMMs are 3/4 of theirs.

``ratios`` names, per size, the comparisons of the UR cell with the plain cells: ``urlstm`` /
``lstm:--`` and ``urlstm`` / ``lstm@loop`` in forward+backward, ``urlstm`` / nn.LSTM in forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from policies.cores import kernels, library, make_core
from policies.cores.cpu import cpu_info

SIZES = {  # name: (T, B, D, H)
    "T128_B64_D128_H256": (128, 64, 128, 256),
    "T128_B16_D64_H64": (128, 16, 64, 64),
    "step_B64_D128_H128": (1, 64, 128, 128),
    "T128_B4_D128_H128": (128, 4, 128, 128),  # a PPO minibatch of vs_sb3.py's MiniGrid setting
    "T102_B8_D128_H128": (102, 8, 128, 128),  # a PPO minibatch of the default run (train.py)
    "step_B32_D128_H128": (1, 32, 128, 128),  # the default run's acting step (32 envs)
}
DEFAULT_CORES = "urlstm,urgru,lstm,gru,lstm:--,lstm@loop,lstm:UR@reference"
RATIOS = {  # name: (core, baseline, "train" or "infer")
    "urlstm/lstm:-- train": ("urlstm", "lstm:--", "train"),
    "urlstm/lstm@loop train": ("urlstm", "lstm@loop", "train"),
    "urlstm/nn.LSTM infer": ("urlstm", "nn.LSTM", "infer"),
}


class LoopLSTM(nn.LSTM):
    """torch.nn.LSTM's weights and cell, always in the compiled loop (one layer)."""

    def forward(self, x, state=None, reset=None):
        B, H = x.shape[1], self.hidden_size
        h0 = x.new_zeros(B, H) if state is None else state[0][0]
        c0 = x.new_zeros(B, H) if state is None else state[1][0]
        keep = None if reset is None else (~reset).to(x.dtype)
        y, h, c, _ = kernels.lstm_scan(x, self.weight_ih_l0, self.bias_ih_l0 + self.bias_hh_l0, h0, c0,
                                       self.weight_hh_l0, x.new_zeros(H), keep, "-", "I")
        return y, (h[None], c[None])


def build(name: str, D: int, H: int) -> nn.Module:
    if name == "nn.LSTM":
        return nn.LSTM(D, H)
    if name == "lstm@loop":
        return LoopLSTM(D, H)
    spec, _, impl = name.partition("@")
    return make_core(spec, D, H, impl="fast" if impl in ("", "segments") else impl)


def timer(name: str, module: nn.Module, x: torch.Tensor, reset, train: bool, clock=time.perf_counter):
    args = (x,) if name == "nn.LSTM" or reset is None else (x, None, reset)
    built = library.extension()  # every call below puts this back after switching the loop on or off
    compiled = built and not name.endswith("@segments")

    def call() -> float:
        library._STATE["ok"] = compiled
        start = clock()
        if train:
            y, _ = module(*args)
            y.sum().backward()
        else:
            with torch.no_grad():
                module(*args)
        elapsed = clock() - start
        library._STATE["ok"] = built
        return elapsed
    return call


def measure(size: tuple[int, int, int, int], names: list[str], reps: int, clock, reset_prob: float) -> dict:
    T, B, D, H = size
    torch.manual_seed(0)
    x = torch.randn(T, B, D)
    reset = torch.rand(T, B) < reset_prob if reset_prob > 0 else None
    out = {}
    for train in (True, False):
        calls = {n: timer(n, build(n, D, H), x.requires_grad_(train), reset, train, clock) for n in names}
        for call in calls.values():  # warm-up (and first-use compilation) outside the timing
            call(), call()
        times: dict[str, list[float]] = {n: [] for n in names}
        inner = max(1, int(0.02 / max(1e-5, min(calls[n]() for n in names))))  # ~20 ms per sample
        for _ in range(reps):
            for n, call in calls.items():
                times[n].append(sum(call() for _ in range(inner)) / inner)
        for n in names:
            out.setdefault(n, {})["train_ms" if train else "infer_ms"] = 1e3 * statistics.median(times[n])
    base = out["nn.LSTM"]
    out["ratios"] = {key: round(out[a][f"{m}_ms"] / out[b][f"{m}_ms"], 3)
                     for key, (a, b, m) in RATIOS.items() if a in out and b in out}
    for n in names:
        out[n]["train_ratio"] = round(out[n]["train_ms"] / base["train_ms"], 3)
        out[n]["infer_ratio"] = round(out[n]["infer_ms"] / base["infer_ms"], 3)
        out[n]["train_ms"] = round(out[n]["train_ms"], 3)
        out[n]["infer_ms"] = round(out[n]["infer_ms"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="timed rounds per core (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--cores", default=DEFAULT_CORES, help="comma-separated specs; '@reference' selects the autograd loop")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {list(SIZES)}")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, "
                         "meaningful with --threads 1)")
    ap.add_argument("--reset-prob", type=float, default=0.0,
                    help="probability of an episode start per step and sequence (0: no resets)")
    args = ap.parse_args()
    if not 0.0 <= args.reset_prob < 1.0:
        ap.error("--reset-prob must be in [0, 1)")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = ["nn.LSTM"] + [c for c in args.cores.split(",") if c and (c != "lstm@loop" or library.extension())]
    result = {
        "machine": {"cpu": cpu_info(), "threads": args.threads,
                    "torch": torch.__version__, "compiled_loop": library.extension()},
        "reps": args.reps,
        "clock": args.clock,
        "reset_prob": args.reset_prob,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "sizes": {s: measure(SIZES[s], names, args.reps, clock, args.reset_prob) for s in args.sizes.split(",")},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
