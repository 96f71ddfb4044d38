"""The compiled ops of the gate-grid scans as autograd functions (the library: library.py).

``CppLSTMScan`` / ``CppGRUScan`` run one layer forward and backward in scan.cpp's loops;
``lstm_scan`` / ``gru_scan`` call the op alone when no gradient is needed (acting). Callers check
``library.runs(x)`` first: these functions assume the library is loaded.
"""

from __future__ import annotations

import torch

from .gates import forget_bias_grad

PRIMARY_CODE = {"-": 0, "C": 0, "U": 0, "O": 1}
AUX_CODE = {"-": 0, "M": 1, "R": 2, "I": 3}  # "I": untied input gate (torch.nn.LSTM's cell; LSTM only)


def _keep2d(keep):
    return None if keep is None else keep.reshape(keep.shape[0], keep.shape[1]).contiguous()


class CppLSTMScan(torch.autograd.Function):
    """One layer of ``lstm:XY`` in C++, input projection included: (x, w_ih, bias, h0, c0, w_hh, b_f,
    keep, primary, aux) -> (y, h, c, g), as ``lstm_reference_scan`` given the same parameters."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux):
        keep = _keep2d(keep)
        codes = (PRIMARY_CODE[primary], AUX_CODE[aux])
        ys, hT, cT, G, S, C, Hp, Cp = torch.ops.urlstm_scan.lstm_fwd(x, w_ih, bias, h0, c0, w_hh, b_f, keep,
                                                                     *codes, True)
        ctx.save_for_backward(S, G, C, Hp, Cp, x, w_ih, w_hh, keep)
        ctx.codes, ctx.aux = codes, aux
        ctx.mark_non_differentiable(G)
        return ys, hT, cT, G

    @staticmethod
    def backward(ctx, dy, dhT, dcT, _dG):
        S, G, C, Hp, Cp, x, w_ih, w_hh, keep = ctx.saved_tensors
        dx, dw_ih, dbias, dh0, dc0, dw_hh = torch.ops.urlstm_scan.lstm_bwd(
            dy, dhT, dcT, S, G, C, Hp, Cp, x, w_ih, w_hh, keep, *ctx.codes, ctx.needs_input_grad[0])
        db_f = forget_bias_grad(dbias, G.shape[-1], ctx.aux, *((1, 0) if ctx.aux == "I" else (0, 1)))
        return (dx if ctx.needs_input_grad[0] else None), dw_ih, dbias, dh0, dc0, dw_hh, db_f, None, None, None


class CppGRUScan(torch.autograd.Function):
    """One layer of ``gru:XY`` in C++, input projection included: (x, w_ih, b_ih, h0, w_hh, b_hh, b_f,
    keep, primary, aux) -> (y, h, g), as ``gru_reference_scan`` given the same parameters."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux):
        keep = _keep2d(keep)
        codes = (PRIMARY_CODE[primary], AUX_CODE[aux])
        ys, hT, G, S, HN, Hp = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, *codes,
                                                             True)
        ctx.save_for_backward(S, HN, G, Hp, x, w_ih, w_hh, keep)
        ctx.codes, ctx.aux = codes, aux
        ctx.mark_non_differentiable(G)
        return ys, hT, G

    @staticmethod
    def backward(ctx, dy, dhT, _dG):
        S, HN, G, Hp, x, w_ih, w_hh, keep = ctx.saved_tensors
        dx, dw_ih, db_ih, dh0, dw_hh, db_hh = torch.ops.urlstm_scan.gru_bwd(
            dy, dhT, S, HN, G, Hp, x, w_ih, w_hh, keep, *ctx.codes, ctx.needs_input_grad[0])
        db_f = forget_bias_grad(db_ih, G.shape[-1], ctx.aux, 1, 3)
        return (dx if ctx.needs_input_grad[0] else None), dw_ih, db_ih, dh0, dw_hh, db_hh, db_f, None, None, None


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary: str, aux: str):
    """CppLSTMScan, or the op alone when no gradient is needed (acting): same outputs."""
    if _needs_graph(x, w_ih, bias, h0, c0, w_hh, b_f):
        return CppLSTMScan.apply(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux)
    out = torch.ops.urlstm_scan.lstm_fwd(x, w_ih, bias, h0, c0, w_hh, b_f, _keep2d(keep),
                                         PRIMARY_CODE[primary], AUX_CODE[aux], False)
    return out[0], out[1], out[2], out[3]


def gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """CppGRUScan, or the op alone when no gradient is needed (acting): same outputs."""
    if _needs_graph(x, w_ih, b_ih, h0, w_hh, b_hh, b_f):
        return CppGRUScan.apply(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
    out = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, _keep2d(keep),
                                        PRIMARY_CODE[primary], AUX_CODE[aux], False)
    return out[0], out[1], out[2]
