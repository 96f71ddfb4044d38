"""One layer of ``gru:XY`` as two Triton kernels: a forward over all T steps and a reverse-time backward.

Same contract as ``kernels.CppGRUScan``: (x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux) ->
(y, h, g), blocks r, z (the keep gate p), n, [a] as torch.nn.GRU plus the grid's auxiliary block.
Layout and launch as in triton_lstm.py: programs over batch rows, whole hidden rows per program,
W_hh in registers when small else K-tiled, the weight and input gradients as GEMMs over all T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import triton_gates as K
from .gates import forget_bias_grad


@triton.jit
def gru_fwd_kernel(XZ, W, BHH, BF, KEEP, HB, S, HN, G, B, T, H, NH, step_z, step_h,
                   HP: tl.constexpr, NB: tl.constexpr, PRIMARY: tl.constexpr, AUX: tl.constexpr,
                   HAS_KEEP: tl.constexpr, RESIDENT: tl.constexpr, SAVE: tl.constexpr, CT: tl.constexpr,
                   DOT_DT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """XZ [T, B, NH] = W_ih x + b_ih; HB [T+1, B, H] holds h0 at 0 and receives h_t at t+1;
    S [T, B, NH] the activated gates and HN [T, B, H] = W_hn h + b_hn (when SAVE); G the effective gate."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, HP)
    rmask, cmask = rows < B, cols < H
    m2 = rmask[:, None] & cmask[None, :]
    oz = rows[:, None] * NH + cols[None, :]
    oh = rows[:, None] * H + cols[None, :]
    bf = tl.load(BF + cols, mask=cmask, other=0.0).to(CT)
    b_r = tl.load(BHH + cols, mask=cmask, other=0.0).to(CT)
    b_p = tl.load(BHH + H + cols, mask=cmask, other=0.0).to(CT)
    b_n = tl.load(BHH + 2 * H + cols, mask=cmask, other=0.0).to(CT)
    if AUX != 0:
        b_a = tl.load(BHH + 3 * H + cols, mask=cmask, other=0.0).to(CT)
    w_r, w_p, w_n, w_a = W, W, W, W  # placeholders: the K-tiled path reads W itself
    if RESIDENT:
        w_r = K.load_wt(W, 0, H, cols, cmask)
        w_p = K.load_wt(W, 1, H, cols, cmask)
        w_n = K.load_wt(W, 2, H, cols, cmask)
        if AUX != 0:
            w_a = K.load_wt(W, 3, H, cols, cmask)
    h = tl.load(HB + oh, mask=m2, other=0.0).to(CT)
    keep = tl.zeros([BLOCK_B], dtype=CT) + 1.0
    for t in range(T):
        if HAS_KEEP:
            keep = tl.load(KEEP + rows, mask=rmask, other=1.0).to(CT)
            h = h * keep[:, None]
            KEEP += B
        # one gate block at a time, each used as soon as it is computed: fewer live registers
        hr = K.recurrent(h, w_r, HB, keep, W, 0, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT)
        r = K.sigmoid(tl.load(XZ + oz, mask=m2, other=0.0).to(CT) + hr + b_r)
        hn = K.recurrent(h, w_n, HB, keep, W, 2, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT) + b_n
        n = K.tanh(tl.load(XZ + oz + 2 * H, mask=m2, other=0.0).to(CT) + r * hn)
        if SAVE:
            tl.store(S + oz, r, mask=m2)
            tl.store(S + oz + 2 * H, n, mask=m2)
            tl.store(HN + oh, hn, mask=m2)
            HN += step_h
        zp = K.recurrent(h, w_p, HB, keep, W, 1, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT)
        p = K.primary(tl.load(XZ + oz + H, mask=m2, other=0.0).to(CT) + zp + b_p + bf, cmask, PRIMARY == 1)
        if SAVE:
            tl.store(S + oz + H, p, mask=m2)
        if AUX != 0:
            za = K.recurrent(h, w_a, HB, keep, W, 3, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                             BLOCK_K, DOT_DT, PRECISION, CT)
            za += tl.load(XZ + oz + 3 * H, mask=m2, other=0.0).to(CT) + b_a
            if AUX == 2:
                za -= bf
            a = K.sigmoid(za)
            if SAVE:
                tl.store(S + oz + 3 * H, a, mask=m2)
        else:
            a = p
        g = K.effective(p, a, AUX)
        h = n + g * (h - n)
        HB += step_h
        tl.store(HB + oh, h.to(HB.dtype.element_ty), mask=m2)
        tl.store(G + oh, g.to(G.dtype.element_ty), mask=m2)
        if SAVE:
            S += step_z
        XZ += step_z
        G += step_h
        if not RESIDENT:
            tl.debug_barrier()  # h_t, just stored, is read back in K tiles by the other threads


@triton.jit
def gru_bwd_kernel(DY, DHT, S, HN, HPREV, W, KEEP, DX, DHZ, DH0, B, T, H, NH, step_z, step_h,
                   HP: tl.constexpr, NB: tl.constexpr, PRIMARY: tl.constexpr, AUX: tl.constexpr,
                   HAS_KEEP: tl.constexpr, RESIDENT: tl.constexpr, CT: tl.constexpr, DOT_DT: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Reverse time: every [T, ...] pointer arrives at step T-1. HPREV [T, B, H] is the masked h_{t-1};
    DX, DHZ [T, B, NH] receive the gradients of W_ih x + b_ih and of W_hh h + b_hh, DH0 [B, H] that of h0."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, HP)
    rmask, cmask = rows < B, cols < H
    m2 = rmask[:, None] & cmask[None, :]
    oz = rows[:, None] * NH + cols[None, :]
    oh = rows[:, None] * H + cols[None, :]
    w_r, w_p, w_n, w_a = W, W, W, W  # placeholders: the K-tiled path reads W itself
    if RESIDENT:
        w_r = K.load_w(W, 0, H, cols, cmask)
        w_p = K.load_w(W, 1, H, cols, cmask)
        w_n = K.load_w(W, 2, H, cols, cmask)
        if AUX != 0:
            w_a = K.load_w(W, 3, H, cols, cmask)
    dh = tl.load(DHT + oh, mask=m2, other=0.0).to(CT)
    left = m2 & (cols[None, :] >= 1)
    for _ in range(T):
        # each gradient is stored (and, W on chip, multiplied into acc) as soon as it is computed
        dh += tl.load(DY + oh, mask=m2, other=0.0).to(CT)
        p = tl.load(S + oz + H, mask=m2, other=0.0)
        n = tl.load(S + oz + 2 * H, mask=m2, other=0.0)
        if AUX != 0:
            a = tl.load(S + oz + 3 * H, mask=m2, other=0.0)
        else:
            a = p
        g = K.effective(p, a, AUX)
        dp, dza = K.gate_grad(dh * (tl.load(HPREV + oh, mask=m2, other=0.0) - n), p, a, AUX)
        if PRIMARY == 1:
            p_left = tl.load(S + oz + H - 1, mask=left, other=0.0)
        else:
            p_left = p
        dz = K.primary_grad(dp, p, p_left, cmask, PRIMARY == 1)
        tl.store(DX + oz + H, dz.to(DX.dtype.element_ty), mask=m2)
        tl.store(DHZ + oz + H, dz.to(DHZ.dtype.element_ty), mask=m2)
        acc = dh * g
        if RESIDENT:
            acc += K.mm(dz, w_p, DOT_DT, PRECISION, CT)
        if AUX != 0:
            tl.store(DX + oz + 3 * H, dza.to(DX.dtype.element_ty), mask=m2)
            tl.store(DHZ + oz + 3 * H, dza.to(DHZ.dtype.element_ty), mask=m2)
            if RESIDENT:
                acc += K.mm(dza, w_a, DOT_DT, PRECISION, CT)
        dz = dh * (1.0 - g) * (1.0 - n * n)  # n's pre-activation
        tl.store(DX + oz + 2 * H, dz.to(DX.dtype.element_ty), mask=m2)
        r = tl.load(S + oz, mask=m2, other=0.0)
        dr = dz * tl.load(HN + oh, mask=m2, other=0.0) * (r - r * r)
        tl.store(DX + oz, dr.to(DX.dtype.element_ty), mask=m2)
        tl.store(DHZ + oz, dr.to(DHZ.dtype.element_ty), mask=m2)
        dz = dz * r
        tl.store(DHZ + oz + 2 * H, dz.to(DHZ.dtype.element_ty), mask=m2)
        if RESIDENT:
            dh = acc + K.mm(dr, w_r, DOT_DT, PRECISION, CT) + K.mm(dz, w_n, DOT_DT, PRECISION, CT)
        else:
            tl.debug_barrier()  # this step's dhz, just stored, is read back in K tiles
            dh = acc + K.dzw_tiled(DHZ, W, rows, rmask, cols, cmask, H, NH, NB, HP, BLOCK_B, BLOCK_K, DOT_DT,
                                   PRECISION, CT)
        if HAS_KEEP:
            dh = dh * tl.load(KEEP + rows, mask=rmask, other=1.0).to(CT)[:, None]
            KEEP -= B
        DY -= step_h
        S -= step_z
        HN -= step_h
        HPREV -= step_h
        DX -= step_z
        DHZ -= step_z
    tl.store(DH0 + oh, dh, mask=m2)


_FWD = K.autotuned(gru_fwd_kernel)
_BWD = K.autotuned(gru_bwd_kernel)


def _meta(x, w_hh, H, keep, primary, aux):
    meta = K.settings(x, w_hh, H)
    return dict(meta, PRIMARY=K.PRIMARY_CODE[primary], AUX=K.AUX_CODE[aux], HAS_KEEP=keep is not None)


def _keep(keep, T, B):
    return None if keep is None else keep.reshape(T, B).to(torch.float32).contiguous()


def forward(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux, save):
    """Run the forward kernel. Returns y, hT, g and, when ``save``, (S, HN, HB) for backward."""
    T, B, _ = x.shape
    H = h0.shape[-1]
    xz = F.linear(x, w_ih, b_ih).contiguous()  # [T, B, NH], one GEMM for all steps
    NH = xz.shape[-1]
    ct = K.compute_dtype(x)
    hb = torch.empty(T + 1, B, H, device=x.device, dtype=ct)  # h0, h_1 .. h_T
    hb[0] = h0
    g = torch.empty(T, B, H, device=x.device, dtype=x.dtype)
    s = torch.empty(T, B, NH, device=x.device, dtype=ct) if save else hb
    hn = torch.empty(T, B, H, device=x.device, dtype=ct) if save else hb
    kp = _keep(keep, T, B)
    meta = _meta(x, w_hh, H, kp, primary, aux)
    args = (xz, w_hh.contiguous(), b_hh.contiguous(), b_f.contiguous(), kp if kp is not None else hb, hb, s, hn, g,
            B, T, H, NH, B * NH, B * H)
    K.launch(gru_fwd_kernel, _FWD, B, args, dict(meta, SAVE=save))
    y = hb[1:] if x.dtype == ct else hb[1:].to(x.dtype)
    return (y, hb[T].to(x.dtype, copy=True), g), ((s, hn, hb) if save else None)


class TritonGRUScan(torch.autograd.Function):
    """One layer of ``gru:XY`` on the Triton kernels; outputs as ``gru_reference_scan``."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux):
        (y, hT, g), (s, hn, hb) = forward(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux, save=True)
        ctx.save_for_backward(x, w_ih, w_hh, s, hn, hb, keep)
        ctx.cfg = (primary, aux)
        ctx.mark_non_differentiable(g)
        return y, hT, g

    @staticmethod
    def backward(ctx, dy, dhT, _dg):
        x, w_ih, w_hh, s, hn, hb, keep = ctx.saved_tensors
        primary, aux = ctx.cfg
        T, B, NH = s.shape
        H = hb.shape[-1]
        ct = s.dtype
        dy = torch.zeros(T, B, H, device=x.device, dtype=ct) if dy is None else dy.contiguous()
        dhT = torch.zeros(B, H, device=x.device, dtype=ct) if dhT is None else dhT.contiguous()
        kp = _keep(keep, T, B)
        hp = hb[:-1] if kp is None else hb[:-1] * kp.to(ct).unsqueeze(-1)  # [T, B, H] the masked h_{t-1}
        hp = hp.contiguous()
        dxz = torch.empty(T, B, NH, device=x.device, dtype=x.dtype)
        dhz = torch.empty_like(dxz)
        dh0 = torch.empty(B, H, device=x.device, dtype=ct)
        meta = _meta(x, w_hh, H, kp, primary, aux)
        args = (dy[T - 1], dhT, s[T - 1], hn[T - 1], hp[T - 1], w_hh.contiguous(),
                kp[T - 1] if kp is not None else dh0, dxz[T - 1], dhz[T - 1], dh0, B, T, H, NH, B * NH, B * H)
        K.launch(gru_bwd_kernel, _BWD, B, args, meta)
        dx2, dh2 = dxz.reshape(T * B, NH), dhz.reshape(T * B, NH)
        dw_hh = dh2.t() @ hp.reshape(T * B, H).to(x.dtype)
        dw_ih = dx2.t() @ x.reshape(T * B, -1)
        dx = (dx2 @ w_ih).reshape(x.shape) if ctx.needs_input_grad[0] else None
        db_ih = dxz.sum((0, 1), dtype=ct)
        db_f = forget_bias_grad(db_ih, H, aux, 1, 3).to(x.dtype)
        db_hh = dhz.sum((0, 1), dtype=ct).to(x.dtype)
        return dx, dw_ih, db_ih.to(x.dtype), dh0.to(x.dtype), dw_hh, db_hh, db_f, None, None, None


def gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """TritonGRUScan, or the forward kernel alone when no gradient is needed (acting): same outputs."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_ih, b_ih, h0, w_hh, b_hh, b_f)):
        return TritonGRUScan.apply(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
    out, _ = forward(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux, save=False)
    return out
