"""One layer of ``lstm:XY`` as two Triton kernels: a forward over all T steps and a reverse-time backward.

Same contract as ``kernels.CppLSTMScan``: (x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux) ->
(y, h, c, g), the input projection done as one GEMM for the whole sequence, the reset mask applied
and the forward bias added inside the loop, the effective gate g returned for the gate statistics.
Each program owns BLOCK_B batch rows and whole hidden rows and runs every time step, so programs
never wait for each other; W_hh is held in registers when it is small (H <= 64), else read in K
tiles each step (from L2). The weight and input gradients are single GEMMs over all T after the
backward kernel (torch), as in haste and the CPU loop. Offsets inside a step are int32 (B * 4H <
2^31); the step pointers advance in 64 bits, so B * T * H may pass 2^31.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import triton_gates as K
from .gates import forget_bias_grad


@triton.jit
def lstm_fwd_kernel(XZ, W, BF, KEEP, HB, CB, S, G, B, T, H, NH, step_z, step_h,
                    HP: tl.constexpr, NB: tl.constexpr, PRIMARY: tl.constexpr, AUX: tl.constexpr,
                    PO: tl.constexpr, AO: tl.constexpr, HAS_KEEP: tl.constexpr, RESIDENT: tl.constexpr,
                    SAVE: tl.constexpr, CT: tl.constexpr, DOT_DT: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """XZ [T, B, NH] = W_ih x + bias; HB, CB [T+1, B, H] hold h0, c0 at 0 and receive h_t, c_t at t+1;
    S [T, B, NH] the activated gates (when SAVE), G [T, B, H] the effective gate."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, HP)
    rmask, cmask = rows < B, cols < H
    m2 = rmask[:, None] & cmask[None, :]
    oz = rows[:, None] * NH + cols[None, :]
    oh = rows[:, None] * H + cols[None, :]
    UO: tl.constexpr = NB - 2
    OO: tl.constexpr = NB - 1
    bf = tl.load(BF + cols, mask=cmask, other=0.0).to(CT)
    w_p, w_a, w_u, w_o = W, W, W, W  # placeholders: the K-tiled path reads W itself
    if RESIDENT:
        w_p = K.load_wt(W, PO, H, cols, cmask)
        w_u = K.load_wt(W, UO, H, cols, cmask)
        w_o = K.load_wt(W, OO, H, cols, cmask)
        if AUX != 0:
            w_a = K.load_wt(W, AO, H, cols, cmask)
    h = tl.load(HB + oh, mask=m2, other=0.0).to(CT)
    c = tl.load(CB + oh, mask=m2, other=0.0).to(CT)
    keep = tl.zeros([BLOCK_B], dtype=CT) + 1.0
    for t in range(T):
        if HAS_KEEP:
            keep = tl.load(KEEP + rows, mask=rmask, other=1.0).to(CT)
            if RESIDENT:
                h = h * keep[:, None]
            c = c * keep[:, None]
            KEEP += B
        # one gate block at a time, each used as soon as it is computed: fewer live registers
        zp = K.recurrent(h, w_p, HB, keep, W, PO, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT)
        p = K.primary(zp + tl.load(XZ + oz + PO * H, mask=m2, other=0.0).to(CT) + bf, cmask, PRIMARY == 1)
        if SAVE:
            tl.store(S + oz + PO * H, p, mask=m2)
        if AUX != 0:
            za = K.recurrent(h, w_a, HB, keep, W, AO, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                             BLOCK_K, DOT_DT, PRECISION, CT)
            za += tl.load(XZ + oz + AO * H, mask=m2, other=0.0).to(CT)
            if AUX == 2:
                za -= bf
            a = K.sigmoid(za)
            if SAVE:
                tl.store(S + oz + AO * H, a, mask=m2)
        else:
            a = p
        g = K.effective(p, a, AUX)
        tl.store(G + oh, g.to(G.dtype.element_ty), mask=m2)
        zu = K.recurrent(h, w_u, HB, keep, W, UO, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT)
        u = K.tanh(zu + tl.load(XZ + oz + UO * H, mask=m2, other=0.0).to(CT))
        if SAVE:
            tl.store(S + oz + UO * H, u, mask=m2)
        if AUX == 3:
            c = g * c + a * u
        else:
            c = u + g * (c - u)
        zo = K.recurrent(h, w_o, HB, keep, W, OO, rows, rmask, cols, cmask, H, HAS_KEEP, RESIDENT, HP, BLOCK_B,
                         BLOCK_K, DOT_DT, PRECISION, CT)
        o = K.sigmoid(zo + tl.load(XZ + oz + OO * H, mask=m2, other=0.0).to(CT))
        if SAVE:
            tl.store(S + oz + OO * H, o, mask=m2)
            S += step_z
        h = o * K.tanh(c)
        HB += step_h
        CB += step_h
        tl.store(HB + oh, h.to(HB.dtype.element_ty), mask=m2)
        tl.store(CB + oh, c.to(CB.dtype.element_ty), mask=m2)
        XZ += step_z
        G += step_h
        if not RESIDENT:
            tl.debug_barrier()  # h_t, just stored, is read back in K tiles by the other threads


@triton.jit
def lstm_bwd_kernel(DY, DHT, DCT, S, CB, W, KEEP, DZ, DH0, DC0, B, T, H, NH, step_z, step_h,
                    HP: tl.constexpr, NB: tl.constexpr, PRIMARY: tl.constexpr, AUX: tl.constexpr,
                    PO: tl.constexpr, AO: tl.constexpr, HAS_KEEP: tl.constexpr, RESIDENT: tl.constexpr,
                    CT: tl.constexpr, DOT_DT: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Reverse time. The pointers DY, S, DZ, KEEP arrive at step T-1 and CB at c_{T-1} (CB[T]);
    DZ [T, B, NH] receives the pre-activation gradients, DH0, DC0 [B, H] those of the initial state."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, HP)
    rmask, cmask = rows < B, cols < H
    m2 = rmask[:, None] & cmask[None, :]
    oz = rows[:, None] * NH + cols[None, :]
    oh = rows[:, None] * H + cols[None, :]
    UO: tl.constexpr = NB - 2
    OO: tl.constexpr = NB - 1
    w_p, w_a, w_u, w_o = W, W, W, W  # placeholders: the K-tiled path reads W itself
    if RESIDENT:
        w_p = K.load_w(W, PO, H, cols, cmask)
        w_u = K.load_w(W, UO, H, cols, cmask)
        w_o = K.load_w(W, OO, H, cols, cmask)
        if AUX != 0:
            w_a = K.load_w(W, AO, H, cols, cmask)
    dh = tl.load(DHT + oh, mask=m2, other=0.0).to(CT)
    dc = tl.load(DCT + oh, mask=m2, other=0.0).to(CT)
    left = m2 & (cols[None, :] >= 1)
    for _ in range(T):
        # each gradient is stored (and, W on chip, multiplied into dh) as soon as it is computed
        dh += tl.load(DY + oh, mask=m2, other=0.0).to(CT)
        o = tl.load(S + oz + OO * H, mask=m2, other=0.0)
        tc = K.tanh(tl.load(CB + oh, mask=m2, other=0.0))
        dz = dh * tc * (o - o * o)
        tl.store(DZ + oz + OO * H, dz.to(DZ.dtype.element_ty), mask=m2)
        dc += dh * o * (1.0 - tc * tc)
        if RESIDENT:
            dh = K.mm(dz, w_o, DOT_DT, PRECISION, CT)
        p = tl.load(S + oz + PO * H, mask=m2, other=0.0)
        u = tl.load(S + oz + UO * H, mask=m2, other=0.0)
        if AUX != 0:
            a = tl.load(S + oz + AO * H, mask=m2, other=0.0)
        else:
            a = p
        cp = tl.load(CB - step_h + oh, mask=m2, other=0.0)
        if HAS_KEEP:
            keep = tl.load(KEEP + rows, mask=rmask, other=1.0).to(CT)
            cp = cp * keep[:, None]
        g = K.effective(p, a, AUX)
        if AUX == 3:
            dz = dc * a * (1.0 - u * u)
            dp = dc * cp
            dza = dc * u * (a - a * a)
        else:
            dz = dc * (1.0 - g) * (1.0 - u * u)
            dp, dza = K.gate_grad(dc * (cp - u), p, a, AUX)
        tl.store(DZ + oz + UO * H, dz.to(DZ.dtype.element_ty), mask=m2)
        if RESIDENT:
            dh += K.mm(dz, w_u, DOT_DT, PRECISION, CT)
        if AUX != 0:
            tl.store(DZ + oz + AO * H, dza.to(DZ.dtype.element_ty), mask=m2)
            if RESIDENT:
                dh += K.mm(dza, w_a, DOT_DT, PRECISION, CT)
        if PRIMARY == 1:
            p_left = tl.load(S + oz + PO * H - 1, mask=left, other=0.0)
        else:
            p_left = p
        dz = K.primary_grad(dp, p, p_left, cmask, PRIMARY == 1)
        tl.store(DZ + oz + PO * H, dz.to(DZ.dtype.element_ty), mask=m2)
        dc = dc * g
        if RESIDENT:
            dh += K.mm(dz, w_p, DOT_DT, PRECISION, CT)
        else:
            tl.debug_barrier()  # this step's dz, just stored, is read back in K tiles
            dh = K.dzw_tiled(DZ, W, rows, rmask, cols, cmask, H, NH, NB, HP, BLOCK_B, BLOCK_K, DOT_DT, PRECISION, CT)
        if HAS_KEEP:
            dh = dh * keep[:, None]
            dc = dc * keep[:, None]
            KEEP -= B
        DY -= step_h
        CB -= step_h
        S -= step_z
        DZ -= step_z
    tl.store(DH0 + oh, dh, mask=m2)
    tl.store(DC0 + oh, dc, mask=m2)


_FWD = K.autotuned(lstm_fwd_kernel)
_BWD = K.autotuned(lstm_bwd_kernel)


def _meta(x, w_hh, H, keep, primary, aux):
    meta = K.settings(x, w_hh, H)
    code = K.AUX_CODE[aux]
    return dict(meta, PRIMARY=K.PRIMARY_CODE[primary], AUX=code, PO=1 if code == 3 else 0, AO=0 if code == 3 else 1,
                HAS_KEEP=keep is not None)


def _keep(keep, T, B):
    return None if keep is None else keep.reshape(T, B).to(torch.float32).contiguous()


def forward(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux, save):
    """Run the forward kernel. Returns y, hT, cT, g and, when ``save``, (S, HB, CB) for backward."""
    T, B, _ = x.shape
    H = h0.shape[-1]
    xz = F.linear(x, w_ih, bias).contiguous()  # [T, B, NH], one GEMM for all steps
    NH = xz.shape[-1]
    ct = K.compute_dtype(x)
    hb = torch.empty(T + 1, B, H, device=x.device, dtype=ct)  # h0, h_1 .. h_T
    cb = torch.empty_like(hb)
    hb[0], cb[0] = h0, c0
    g = torch.empty(T, B, H, device=x.device, dtype=x.dtype)
    s = torch.empty(T, B, NH, device=x.device, dtype=ct) if save else hb
    kp = _keep(keep, T, B)
    meta = _meta(x, w_hh, H, kp, primary, aux)
    args = (xz, w_hh.contiguous(), b_f.contiguous(), kp if kp is not None else hb, hb, cb, s, g, B, T, H, NH,
            B * NH, B * H)
    K.launch(lstm_fwd_kernel, _FWD, B, args, dict(meta, SAVE=save))
    y = hb[1:] if x.dtype == ct else hb[1:].to(x.dtype)
    out = (y, hb[T].to(x.dtype, copy=True), cb[T].to(x.dtype, copy=True), g)
    return out, ((s, hb, cb) if save else None)


class TritonLSTMScan(torch.autograd.Function):
    """One layer of ``lstm:XY`` on the Triton kernels; outputs as ``lstm_reference_scan``."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux):
        (y, hT, cT, g), (s, hb, cb) = forward(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux, save=True)
        ctx.save_for_backward(x, w_ih, w_hh, s, hb, cb, keep)
        ctx.cfg = (primary, aux)
        ctx.mark_non_differentiable(g)
        return y, hT, cT, g

    @staticmethod
    def backward(ctx, dy, dhT, dcT, _dg):
        x, w_ih, w_hh, s, hb, cb, keep = ctx.saved_tensors
        primary, aux = ctx.cfg
        T, B, NH = s.shape
        H = hb.shape[-1]
        ct = s.dtype
        dy = torch.zeros(T, B, H, device=x.device, dtype=ct) if dy is None else dy.contiguous()
        dhT = torch.zeros(B, H, device=x.device, dtype=ct) if dhT is None else dhT.contiguous()
        dcT = torch.zeros(B, H, device=x.device, dtype=ct) if dcT is None else dcT.contiguous()
        dz = torch.empty(T, B, NH, device=x.device, dtype=x.dtype)
        dh0 = torch.empty(B, H, device=x.device, dtype=ct)
        dc0 = torch.empty_like(dh0)
        kp = _keep(keep, T, B)
        meta = _meta(x, w_hh, H, kp, primary, aux)
        args = (dy[T - 1], dhT, dcT, s[T - 1], cb[T], w_hh.contiguous(), kp[T - 1] if kp is not None else dh0,
                dz[T - 1], dh0, dc0, B, T, H, NH, B * NH, B * H)
        K.launch(lstm_bwd_kernel, _BWD, B, args, meta)
        hp = hb[:-1] if kp is None else hb[:-1] * kp.to(ct).unsqueeze(-1)  # [T, B, H] the masked h_{t-1}
        dz2 = dz.reshape(T * B, NH)
        dw_hh = dz2.t() @ hp.reshape(T * B, H).to(x.dtype)
        dw_ih = dz2.t() @ x.reshape(T * B, -1)
        dx = (dz2 @ w_ih).reshape(x.shape) if ctx.needs_input_grad[0] else None
        dbias = dz.sum((0, 1), dtype=ct)
        db_f = forget_bias_grad(dbias, H, aux, *((1, 0) if aux == "I" else (0, 1))).to(x.dtype)
        return (dx, dw_ih, dbias.to(x.dtype), dh0.to(x.dtype), dc0.to(x.dtype), dw_hh, db_f, None, None, None)


def lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary: str, aux: str):
    """TritonLSTMScan, or the forward kernel alone when no gradient is needed (acting): same outputs."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_ih, bias, h0, c0, w_hh, b_f)):
        return TritonLSTMScan.apply(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux)
    out, _ = forward(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux, save=False)
    return out
