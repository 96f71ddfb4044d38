"""What the Triton scans of the gate grid share: the gate maths as Triton functions, and launch settings.

The maths is that of ``gates.py`` (urlstm.md sections 1 and 3) on one program's rows: a tile
[BLOCK_B, HP] holding whole rows of the hidden dimension (HP = H rounded up to a power of two,
masked), so that cumax (a softmax and a cumulative sum over H) needs no second pass.
Gate codes as in kernels.py: primary 0 sigmoid, 1 cumax; auxiliary 0 none, 1 master (M),
2 refine (R), 3 the untied input gate of torch.nn.LSTM's cell (LSTM only).

Whether the kernels run compiled or through Triton's interpreter is decided when these modules are
imported (``TRITON_INTERPRET=1``, read by ``triton.jit``); the interpreter runs them on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = bool(triton.knobs.runtime.interpret)
BLOCK_K = 32  # K tile of the recurrent product when W_hh is streamed
RESIDENT_ELEMENTS = 16384  # W_hh (all gate blocks, padded) is held in registers up to this size: H <= 64
MAX_HIDDEN = 512  # above this a program's rows no longer fit on chip: the Python scan is used
PRIMARY_CODE = {"-": 0, "C": 0, "U": 0, "O": 1}
AUX_CODE = {"-": 0, "M": 1, "R": 2, "I": 3}


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def primary(z, cmask, CUMAX: tl.constexpr):
    """p from its pre-activation z [BLOCK_B, HP] (forget bias added): sigmoid, or cumax over the row."""
    if CUMAX:
        z = tl.where(cmask[None, :], z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        p = tl.cumsum(e / tl.sum(e, axis=1)[:, None], axis=1)
    else:
        p = sigmoid(z)
    return p


@triton.jit
def effective(p, a, AUX: tl.constexpr):
    """g from p and the activated auxiliary gate a (ignored for AUX 0 and 3)."""
    if AUX == 1:
        g = p * p + a * (p - p * p)
    elif AUX == 2:
        g = p * p + 2.0 * a * (p - p * p)
    else:
        g = p
    return g


@triton.jit
def gate_grad(dg, p, a, AUX: tl.constexpr):
    """dL/dp and dL/d(auxiliary pre-activation) from dL/dg (the latter 0 for AUX 0)."""
    q = p - p * p
    if AUX == 1:
        dp = dg * (2.0 * p * (1.0 - a) + a)
        dza = dg * q * (a - a * a)
    elif AUX == 2:
        dp = dg * (2.0 * p + 2.0 * a * (1.0 - 2.0 * p))
        dza = dg * 2.0 * q * (a - a * a)
    else:
        dp = dg
        dza = dg * 0.0
    return dp, dza


@triton.jit
def primary_grad(dp, p, p_left, cmask, CUMAX: tl.constexpr):
    """dL/dz of the primary gate from dL/dp. p_left is p shifted right by one column (0 first):
    for cumax the softmax values are p - p_left."""
    if CUMAX:
        dp = tl.where(cmask[None, :], dp, 0.0)
        s = p - p_left
        ds = tl.cumsum(dp, axis=1, reverse=True)
        dz = s * (ds - tl.sum(s * ds, axis=1)[:, None])
    else:
        dz = dp * (p - p * p)
    return dz


@triton.jit
def mm(a, b, DOT_DT: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr):
    """a @ b with a rounded to b's dtype (the weights'), accumulated in CT."""
    return tl.dot(a.to(b.dtype).to(DOT_DT), b.to(DOT_DT), input_precision=PRECISION, out_dtype=CT)


@triton.jit
def load_wt(W, blk, H, cols, cmask):
    """Gate block ``blk`` of W [NB*H, H], transposed: [HP (k), HP (n)], for h @ W_blk^T."""
    return tl.load(W + (blk * H + cols)[None, :] * H + cols[:, None], mask=cmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def load_w(W, blk, H, cols, cmask):
    """Gate block ``blk`` of W [NB*H, H] as stored: [HP (n), HP (k)], for dz_blk @ W_blk."""
    return tl.load(W + (blk * H + cols)[:, None] * H + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def hw_tiled(HPREV, keep, W, blk, rows, rmask, cols, cmask, H, HAS_KEEP: tl.constexpr, HP: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, PRECISION: tl.constexpr,
             CT: tl.constexpr):
    """(keep * h_prev) @ W_blk^T with h_prev [B, H] read from memory and W streamed in K tiles."""
    acc = tl.zeros([BLOCK_B, HP], dtype=CT)
    for k0 in range(0, HP, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < H
        hk = tl.load(HPREV + rows[:, None] * H + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if HAS_KEEP:
            hk = hk * keep[:, None]
        wk = tl.load(W + (blk * H + cols)[None, :] * H + kk[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc += mm(hk, wk, DOT_DT, PRECISION, CT)
    return acc


@triton.jit
def recurrent(h, w, HPREV, keep, W, blk, rows, rmask, cols, cmask, H, HAS_KEEP: tl.constexpr,
              RESIDENT: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
              DOT_DT: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr):
    """Gate block ``blk`` of h_prev @ W^T: from h (registers, already masked) and the block w held
    on chip when RESIDENT, else from h_prev in memory (HPREV, masked by keep) and W in K tiles."""
    if RESIDENT:
        acc = mm(h, w, DOT_DT, PRECISION, CT)
    else:
        acc = hw_tiled(HPREV, keep, W, blk, rows, rmask, cols, cmask, H, HAS_KEEP, HP, BLOCK_B, BLOCK_K, DOT_DT,
                       PRECISION, CT)
    return acc


@triton.jit
def dzw_tiled(DZ, W, rows, rmask, cols, cmask, H, NH, NB: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr):
    """dz @ W with dz [B, NB*H] read from memory and W [NB*H, H] streamed in K tiles."""
    acc = tl.zeros([BLOCK_B, HP], dtype=CT)
    for blk in tl.static_range(NB):
        for k0 in range(0, HP, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < H
            dk = tl.load(DZ + rows[:, None] * NH + blk * H + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                         other=0.0)
            wk = tl.load(W + (blk * H + kk)[:, None] * H + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                         other=0.0)
            acc += mm(dk, wk, DOT_DT, PRECISION, CT)
    return acc


def settings(x: torch.Tensor, w_hh: torch.Tensor, hidden: int) -> dict:
    """Compile-time settings of a launch: padded width, compute and dot dtypes, precision, residency."""
    hp = triton.next_power_of_2(max(hidden, 16))
    nb = w_hh.shape[0] // hidden
    wide = x.dtype == torch.float64
    dot = tl.float64 if wide else (tl.float32 if INTERPRET or x.dtype == torch.float32 else tl.bfloat16)
    tf32 = x.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    resident = nb * hp * hp <= RESIDENT_ELEMENTS and os.environ.get("URLSTM_TRITON_STREAM_W", "") in ("", "0")
    return {"HP": hp, "NB": nb, "CT": tl.float64 if wide else tl.float32, "DOT_DT": dot,
            "PRECISION": "tf32" if tf32 else "ieee", "RESIDENT": resident}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """State and saved activations: float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def autotune_configs() -> list[triton.Config]:
    """Rows per program and warps; ``prune`` keeps those that suit the hidden width."""
    return [triton.Config({"BLOCK_B": bb, "BLOCK_K": BLOCK_K}, num_warps=w)
            for bb, w in ((16, 4), (32, 4), (16, 8), (32, 8), (16, 16), (32, 16))]


TUNED = {32: ((16, 4), (32, 4)), 128: ((16, 4), (16, 8), (32, 8)), 1 << 30: ((16, 8), (16, 16), (32, 16))}


def prune(configs, named_args, **kwargs):
    """The (rows, warps) tried for a padded width HP (TUNED): more warps for wider rows, as a
    [BLOCK_B, HP] float32 tile costs BLOCK_B * HP / (32 * warps) registers per thread and a step
    holds about ten of them."""
    hp = kwargs.get("HP", named_args.get("HP", 0))
    tried = next(v for width, v in sorted(TUNED.items()) if hp <= width)
    return [c for c in configs if (c.kwargs["BLOCK_B"], c.num_warps) in tried] or configs


def autotuned(kernel):
    """The kernel behind triton.autotune, keyed on H, the cell, residency, training vs acting and the
    dtypes, never on B (None when interpreted: the interpreter has no timings)."""
    if INTERPRET:
        return None
    key = [k for k in ("H", "NB", "PRIMARY", "AUX", "RESIDENT", "SAVE") if k in kernel.arg_names]
    return triton.autotune(configs=autotune_configs(), key=key, prune_configs_by={"early_config_prune": prune})(kernel)


def launch(kernel, tuned, batch: int, args: tuple, meta: dict) -> None:
    """Run ``kernel`` over programs of BLOCK_B rows: autotuned when ``tuned`` is set, unless
    URLSTM_TRITON_AUTOTUNE=0 (then the first configuration of TUNED for this width)."""
    if tuned is None or os.environ.get("URLSTM_TRITON_AUTOTUNE", "1") == "0":
        rows, warps = next(v for width, v in sorted(TUNED.items()) if meta["HP"] <= width)[0]
        kernel[(triton.cdiv(batch, rows),)](*args, BLOCK_B=rows, BLOCK_K=BLOCK_K, num_warps=warps, **meta)
    else:
        tuned[lambda m: (triton.cdiv(batch, m["BLOCK_B"]),)](*args, **meta)
