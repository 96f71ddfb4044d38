"""The PPO learner's roofline: FLOPs per env step, the float32 GEMM peak, and the share reached.

FLOPs are those of the matrix products (aten mm, addmm, bmm, convolution), as
``torch.utils.flop_counter.FlopCounterMode`` counts them: the elementwise work (gates, activations,
losses, Adam) is not counted. At width 128 the products dominate: a forward UR-LSTM step costs
2 * (E + H) * 4H = 262,144 FLOPs of products for E = H = 128, its cell (urlstm.md section 2) some
25 elementwise operations per hidden unit, five of them sigmoid or tanh: about 3,200, near 1%; the
backward pass keeps that ratio. The fast paths of the cores (the compiled loop, custom autograd
Functions) hide their GEMMs from the counter, so the count runs on a CPU copy of the policy whose core
runs its reference path: the same products, one autograd op each.

Per env step the learner does

    acting    one forward step (``ActorCritic.act``), and one value per env per rollout (the bootstrap)
    learning  update_epochs x (forward + backward) of the training sequences (``ActorCritic.evaluate``)

each split into encoder+trunk, core and heads. The learning count runs whole sequences of ``seq_len``
steps (the first step of a sequence has no gradient to pass to its stored start state, so the count
per step depends on seq_len) on a few sequences, and scales by the batch (the count is linear in it).
Truncated episodes' extra values and ``--refresh-states`` re-runs are not counted.
"""

from __future__ import annotations

import copy
import timeit
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agents.config import TrainConfig
from policies.action_mask import MASK_KEY
from policies.actor_critic import ActorCritic, obs_zeros, tree_map

PEAK_THREADS = (1, 2)
SQUARE_SIZES = (256, 512, 1024)
PARTS = {"encoder_trunk": ("encoder", "trunk"), "core": ("core",), "heads": ("head", "value_head")}
COUNTED = "matrix products only (FlopCounterMode: mm, addmm, bmm, convolution), core on its reference path"


class _Root(nn.Module):
    """Enters the policy as a submodule, so that FlopCounterMode names its parts policy.core, ..."""

    def __init__(self, policy: ActorCritic):
        super().__init__()
        self.policy = policy

    def forward(self, fn: Callable[[ActorCritic], torch.Tensor | None]):
        return fn(self.policy)


def _under(counts: dict[str, int], name: str) -> int:
    """FLOPs of module ``name`` and its submodules; a module called through a method other than
    forward (``head.sample``) is not entered itself: then its top-most entered submodules."""
    if name in counts:
        return counts[name]
    subs = [k for k in counts if k.startswith(name + ".")]
    return sum(counts[k] for k in subs if not any(k.startswith(s + ".") for s in subs))


def count(policy: ActorCritic, fn: Callable[[ActorCritic], torch.Tensor | None], rest: str) -> dict[str, int]:
    """FLOPs of ``fn(policy)`` (and of the backward it runs), split into encoder_trunk, core, heads.

    Two parts are read off FlopCounterMode's module names, the part ``rest`` is the total less
    them: ``core.step`` is a method the counter does not enter (acting: rest = "core"), and in a
    backward pass it lays the gradient of one head into both heads (learning: rest = "heads").
    Nothing else in the policy multiplies matrices.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        _Root(policy)(fn)
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    total = counts.get("Global", 0)
    parts = {part: sum(_under(counts, f"_Root.policy.{m}") for m in modules)
             for part, modules in PARTS.items() if part != rest}
    return {**parts, rest: total - sum(parts.values()), "total": total}


def reference_copy(policy: ActorCritic) -> ActorCritic:
    """A float32 CPU copy whose core runs its reference path (plain autograd ops)."""
    copied = copy.deepcopy(policy).to("cpu").float()
    if hasattr(copied.core, "impl"):
        copied.core.impl = "reference"
    return copied


def _inputs(policy: ActorCritic, T: int, B: int) -> dict:
    """Zero inputs [T, B, ...] for ``evaluate`` (action masks allow every action); episodes start at 0."""
    obs = obs_zeros(policy.observation_space, (T, B), "cpu")
    if policy.masked:
        obs[MASK_KEY].fill_(1)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0] = True
    actions = torch.zeros(T, B, *policy.head.action_shape(), dtype=policy.head.action_dtype())
    return {"obs": obs, "state0": policy.initial_state(B, "cpu"), "reset": reset, "actions": actions,
            "prev_action": actions, "prev_reward": torch.zeros(T, B)}


def acting_flops(policy: ActorCritic, num_steps: int, batch: int = 2) -> dict[str, float]:
    """FLOPs per env step of acting: one ``act`` step, plus 1/num_steps of a ``value`` step."""
    inp = _inputs(policy, 1, batch)
    step = {k: tree_map(lambda x: x[0], inp[k]) for k in ("obs", "reset", "prev_action", "prev_reward")}
    policy.eval()
    with torch.no_grad():
        act = count(policy, lambda p: p.act(step["obs"], inp["state0"], step["reset"],
                                            step["prev_action"], step["prev_reward"]), rest="core")
        value = count(policy, lambda p: p.value(step["obs"], inp["state0"], step["reset"],
                                                step["prev_action"], step["prev_reward"]), rest="core")
    return {k: (act[k] + value[k] / num_steps) / batch for k in act}


def learning_flops(policy: ActorCritic, seq_len: int, sequences: int = 2) -> dict[str, float]:
    """FLOPs per env step of one forward + backward of ``evaluate`` over whole sequences."""
    policy.train()

    def forward_backward(p: ActorCritic) -> None:
        logprob, entropy, value, kl = p.evaluate(**_inputs(p, seq_len, sequences), with_uniform_kl=True)
        (logprob.sum() + entropy.sum() + value.sum() + kl.sum()).backward()

    return {k: v / (seq_len * sequences) for k, v in count(policy, forward_backward, rest="heads").items()}


def flops_per_step(policy: ActorCritic, cfg: TrainConfig) -> dict:
    """FLOPs per env step of ``cfg``'s PPO: acting + update_epochs x learning, each by part."""
    ref = reference_copy(policy)
    acting = acting_flops(ref, cfg.num_steps)
    learning = {k: cfg.update_epochs * v for k, v in learning_flops(ref, cfg.seq_len).items()}
    return {"acting": _rounded(acting), "learning": _rounded(learning),
            "total": round(acting["total"] + learning["total"])}


def _rounded(parts: dict[str, float]) -> dict[str, int]:
    return {k: round(v) for k, v in parts.items()}


def gemm_shapes(policy: ActorCritic, cfg: TrainConfig) -> dict[str, tuple[int, int, int]]:
    """[M, K] x [K, N] products to time: square ones, and the config's own with the core's first
    weight matrix [N, K] (W_ih: the learning minibatch's input projection, one step of a learning
    minibatch, one acting step)."""
    n, k = next(p for p in policy.core.parameters() if p.dim() == 2).shape
    rows_per_minibatch = cfg.num_envs * cfg.num_steps // cfg.num_minibatches
    shapes = {f"square {s}": (s, s, s) for s in SQUARE_SIZES}
    shapes["learning minibatch"] = (rows_per_minibatch, k, n)
    shapes["learning step"] = (rows_per_minibatch // cfg.seq_len, k, n)
    shapes["acting step"] = (cfg.num_envs, k, n)
    return shapes


def gemm_gflops(m: int, k: int, n: int, min_run_time: float = 0.2, min_calls: int = 10) -> float:
    """float32 ``torch.mm`` [m, k] x [k, n] on the current thread count: GFLOP/s of the fastest of
    its calls over about ``min_run_time`` seconds (at least ``min_calls``). The fastest call, not
    the mean: on a shared machine most 2-thread calls wait for a core, which is not the peak."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    timer = timeit.Timer(lambda: torch.mm(a, b, out=out))
    first = min(timer.repeat(repeat=3, number=1))  # also warms the thread pool and caches
    repeat = max(min_calls, min(10_000, int(min_run_time / max(first, 1e-7))))
    return 2 * m * k * n / min(timer.repeat(repeat=repeat, number=1)) / 1e9


def gemm_peaks(shapes: dict[str, tuple[int, int, int]], threads: Sequence[int] = PEAK_THREADS,
               min_run_time: float = 0.2) -> dict[str, dict[str, float]]:
    """GFLOP/s per thread count (key: str(threads)) and shape; the caller's thread count is kept."""
    before = torch.get_num_threads()
    rates = {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            rates[str(t)] = {name: float(f"{gemm_gflops(*mkn, min_run_time):.4g}") for name, mkn in shapes.items()}
    finally:
        torch.set_num_threads(before)
    return rates


def roofline(flops: dict, gflops: dict[str, dict[str, float]], result: dict) -> dict:
    """The roofline block: FLOPs per step, the GEMM rates, the achieved rate and its share of the
    peak (the fastest shape) per thread count, and of twice the 1-thread peak (two cores scaling
    perfectly: an upper bound of the 2-thread peak that another job on the second core cannot
    pull down). ``result`` is ``train_speed.measure``'s."""
    achieved = flops["total"] * result["sps"] / 1e9
    steps, seconds = result["steps_measured"], result["seconds"]
    peak = {t: max(rates.values()) for t, rates in gflops.items()}
    return {"counted": COUNTED, "flops_per_step": flops, "gemm_gflops": gflops, "peak_gflops": peak,
            "achieved_gflops": round(achieved, 2),
            "share_of_peak": {t: round(achieved / p, 3) for t, p in peak.items()},
            "share_of_twice_the_1_thread_peak": round(achieved / (2 * peak["1"]), 3) if "1" in peak else None,
            "gflops_while_learning": round(flops["learning"]["total"] * steps / seconds["learn"] / 1e9, 2),
            "gflops_while_acting": round(flops["acting"]["total"] * steps / seconds["inference"] / 1e9, 2)}
