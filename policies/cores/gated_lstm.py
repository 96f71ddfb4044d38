"""`lstm:XY` grid cells and `urlstm` (== `lstm:UR`): the coupled LSTM with UR gates (urlstm.md 2-3).

Per layer k: ``weight_ih_l{k}`` [nb*H, in], ``weight_hh_l{k}`` [nb*H, H], ``bias_l{k}`` [nb*H] (zeros),
``forget_bias_l{k}`` [H]; gate blocks in order p (forget), a (refine/master; absent for Y = '-'), u, o.

    p = act_X(z_p + b_f);  a = sigmoid(z_a - b_f) (R) or sigmoid(z_a) (M);  g = effective_gate(p, a)
    c_t = g * c_{t-1} + (1 - g) * tanh(z_u);  h_t = sigmoid(z_o) * tanh(c_t)

The input projection ``W_ih x + bias`` is one GEMM for the whole sequence; the scan adds ``W_hh h``
and b_f per step. ``impl="fast"`` scans with a hand-written backward (the compiled loop
when it built, else Python); ``impl="reference"`` is the plain autograd loop of the equations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import gates as G
from . import kernels, library
from .base import GridCore, State, between_layers


def lstm_reference_scan(x: Tensor, w_ih: Tensor, bias: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_f: Tensor,
                        keep: Tensor | None, primary: str, aux: str):
    """Autograd loop of the equations for one layer. x [T, B, D], h, c [B, H], keep [T, B, 1] or None.

    Returns y [T, B, H], h, c [B, H] and the effective gates g [T, B, H] (detached).
    """
    H = h.shape[-1]
    xz = F.linear(x, w_ih, bias)  # [T, B, nb*H]
    ys, gs = [], []
    keeps = keep.unbind(0) if keep is not None else None
    for t, xz_t in enumerate(xz.unbind(0)):
        if keeps is not None:
            h, c = h * keeps[t], c * keeps[t]
        z = xz_t + h @ w_hh.t()
        p = G.primary_gate(z[:, :H] + b_f, primary)
        a = None if aux == "-" else torch.sigmoid(z[:, H:2 * H] - (b_f if aux == "R" else 0))
        zu, zo = z[:, -2 * H:-H], z[:, -H:]
        g = G.effective_gate(p, a, aux)
        c = g * c + (1 - g) * torch.tanh(zu)
        h = torch.sigmoid(zo) * torch.tanh(c)
        ys.append(h)
        gs.append(g)
    return torch.stack(ys), h, c, torch.stack(gs).detach()


class LSTMScan(torch.autograd.Function):
    """Fast scan in Python: forward under no_grad saves the gates; backward is written by hand."""

    @staticmethod
    def forward(ctx, xz, h0, c0, w_hh, b_f, keep, primary, aux):
        T, B, NH = xz.shape
        H = h0.shape[-1]
        xz = G.fold_forget_bias(xz, b_f, aux, 0, 1)
        nb = NH // H
        ys, cs = xz.new_empty(T, B, H), xz.new_empty(T, B, H)
        S = xz.new_empty(T, B, NH)  # activated gates: p, [a], tanh(z_u), sigmoid(z_o)
        Gs, hprev, cprev = xz.new_empty(T, B, H), xz.new_empty(T, B, H), xz.new_empty(T, B, H)
        w_t = w_hh.t()
        h, c = h0, c0
        for t in range(T):
            if keep is not None:
                h, c = h * keep[t], c * keep[t]
            hprev[t], cprev[t] = h, c
            z = torch.addmm(xz[t], h, w_t)
            s = S[t]
            torch.sigmoid(z, out=s)
            if primary == "O":
                s[:, :H] = G.primary_gate(z[:, :H], "O")
            u = torch.tanh(z[:, -2 * H:-H], out=s[:, -2 * H:-H])
            g = G.effective_gate(s[:, :H], s[:, H:2 * H] if nb == 4 else None, aux)
            Gs[t] = g
            c = torch.addcmul(u, g, c - u)  # g*c + (1-g)*u
            cs[t] = c
            h = torch.mul(s[:, -H:], torch.tanh(c), out=ys[t])
        ctx.save_for_backward(S, Gs, cs, hprev, cprev, w_hh, keep)
        ctx.cfg = (primary, aux)
        ctx.mark_non_differentiable(Gs)
        return ys, h.clone(), c.clone(), Gs

    @staticmethod
    def backward(ctx, dy, dhT, dcT, _dG):
        S, Gs, cs, hprev, cprev, w_hh, keep = ctx.saved_tensors
        primary, aux = ctx.cfg
        T, B, NH = S.shape
        H = NH // (4 if aux != "-" else 3)
        dZ = torch.empty_like(S)
        dh = dhT.clone() if dhT is not None else S.new_zeros(B, H)
        dc = dcT.clone() if dcT is not None else S.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            if dy is not None:
                dh = dh + dy[t]
            s, g = S[t], Gs[t]
            p, u, o = s[:, :H], s[:, -2 * H:-H], s[:, -H:]
            tc = torch.tanh(cs[t])
            dzt = dZ[t]
            dzt[:, -H:] = dh * tc * (o - o * o)
            dc = dc + dh * o * (1 - tc * tc)
            dzt[:, -2 * H:-H] = dc * (1 - g) * (1 - u * u)
            dzp, dza = G.gate_backward(dc * (cprev[t] - u), p, s[:, H:2 * H] if aux != "-" else None, primary, aux)
            dzt[:, :H] = dzp
            if dza is not None:
                dzt[:, H:2 * H] = dza
            dc = dc * g
            dh = dzt @ w_hh
            if keep is not None:
                dh, dc = dh * keep[t], dc * keep[t]
        dW = dZ.reshape(-1, NH).t() @ hprev.reshape(-1, H)
        return dZ, dh, dc, dW, G.forget_bias_grad(dZ.sum((0, 1)), H, aux, 0, 1), None, None, None


def lstm_fast_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary: str, aux: str):
    """The fast scan: the compiled loop on CPU when it built, the Triton kernels on CUDA when triton
    imports, else LSTMScan. Same signature as the reference."""
    from . import triton_scan

    if library.runs(x):
        return kernels.lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux)
    if triton_scan.usable(x, h0.shape[-1]):
        out = triton_scan.lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux)
        if out is not None:  # None: the kernel does not build for this GPU (warned once)
            return out
    return LSTMScan.apply(F.linear(x, w_ih, bias), h0, c0, w_hh, b_f, keep, primary, aux)


def scan_layers(scan, x: Tensor, state: State, layers, keep: Tensor | None, primary: str, aux: str,
                dropout: float = 0.0, training: bool = False):
    """Stacked layers: ``layers`` holds (w_ih, bias, w_hh, b_f) per layer, state is (h0, c0), each [L, B, H].
    ``dropout`` acts on each layer's output but the last, in training mode (torch.nn.LSTM's rule).

    Returns y [T, B, H] of the top layer, the final state (h, c) and every layer's gates, flat.
    """
    hs, cs, gs, inp = [], [], [], x
    for k, (w_ih, bias, w_hh, b_f) in enumerate(layers):
        y, h, c, g = scan(inp, w_ih, bias, state[0][k], state[1][k], w_hh, b_f, keep, primary, aux)
        inp = between_layers(y, k, len(layers), dropout, training)
        hs.append(h)
        cs.append(c)
        gs.append(g.flatten())
    return inp, (torch.stack(hs), torch.stack(cs)), torch.cat(gs)


class GatedLSTM(GridCore):
    """A coupled LSTM with gate grid cell ``cell`` (default ``UR``: the UR-LSTM).

    Drop-in for torch.nn.LSTM: ``forward(input, (h0, c0))`` returns ``(output, (h_n, c_n))``, with
    h_n, c_n [num_layers, B, H]; an optional ``reset`` [T, B] mask applies the reset convention.

    Args:
        input_size, hidden_size, num_layers, batch_first: as torch.nn.LSTM.
        cell: the grid cell XY, X in ``-COU`` (primary gate), Y in ``-MR`` (auxiliary gate).
        impl: ``"fast"`` (default) or ``"reference"`` (plain autograd loop).
        forget_bias: the constant forget bias of X = ``-`` (default 1.0).
        chrono_tmax: T_max of the chrono init of X = ``C`` (default 1000).
        train_forget_bias: False freezes ``forget_bias_l{k}`` at its init.
        dropout: as torch.nn.LSTM: on each layer's output but the last, in training mode only.
    """

    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False, *,
                 cell: str = "UR", impl: str = "fast", forget_bias: float = 1.0, chrono_tmax: float = 1000.0,
                 train_forget_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first, cell, impl, forget_bias, chrono_tmax,
                         train_forget_bias, dropout)
        H, nb = self.hidden_size, self.num_blocks
        for k in range(num_layers):
            width = input_size if k == 0 else H
            w_ih, w_hh = nn.Parameter(torch.empty(nb * H, width)), nn.Parameter(torch.empty(nb * H, H))
            G.uniform_(w_ih, H)
            G.uniform_(w_hh, H)
            b_f = self.new_forget_bias()
            setattr(self, f"weight_ih_l{k}", w_ih)
            setattr(self, f"weight_hh_l{k}", w_hh)
            setattr(self, f"bias_l{k}", nn.Parameter(torch.zeros(nb * H)))
            setattr(self, f"forget_bias_l{k}", b_f)

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        layers = [(getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_l{k}"), getattr(self, f"weight_hh_l{k}"),
                   getattr(self, f"forget_bias_l{k}")) for k in range(self.num_layers)]
        scan = lstm_reference_scan if self.impl == "reference" else lstm_fast_scan
        y, state, self._gates = scan_layers(scan, x, state, layers, keep, self.primary, self.aux,
                                            self.dropout, self.training)
        return y, state


class URLSTM(GatedLSTM):
    """The UR-LSTM (``lstm:UR``): UGI forget bias and refine gate; a drop-in for torch.nn.LSTM."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 **options) -> None:
        options.setdefault("cell", "UR")
        super().__init__(input_size, hidden_size, num_layers, batch_first, **options)
