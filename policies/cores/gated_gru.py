"""`gru:XY` grid cells and `urgru` (== `gru:UR`): torch.nn.GRU with the grid applied to its keep gate.

torch.nn.GRU computes ``h' = (1 - z) * n + z * h``, so z is the keep gate; here ``z`` becomes the
effective gate ``g = effective_gate(act_X(z_z + b_f), a)`` with an auxiliary block ``a`` added as a
fourth gate block (refine: ``sigmoid(z_a - b_f)``, master: ``sigmoid(z_a)``). Everything else is
nn.GRU: per layer ``weight_ih_l{k}`` [nb*H, in], ``weight_hh_l{k}`` [nb*H, H], ``bias_ih_l{k}``,
``bias_hh_l{k}`` [nb*H] in block order r, z, n, [a], plus ``forget_bias_l{k}`` [H]. Weights and the
r, n biases are initialised as in nn.GRU; the z and a biases start at 0 (b_f carries the init).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import gates as G
from . import kernels, library
from .base import GridCore, State, between_layers


def gru_reference_scan(x: Tensor, w_ih: Tensor, b_ih: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, b_f: Tensor,
                       keep: Tensor | None, primary: str, aux: str):
    """Autograd loop of the equations for one layer. x [T, B, D], h [B, H], keep [T, B, 1] or None.

    Returns y [T, B, H], h [B, H] and the effective gates g [T, B, H] (detached).
    """
    H = h.shape[-1]
    xz = F.linear(x, w_ih, b_ih)  # [T, B, nb*H]
    ys, gs = [], []
    keeps = keep.unbind(0) if keep is not None else None
    for t, xz_t in enumerate(xz.unbind(0)):
        if keeps is not None:
            h = h * keeps[t]
        hz = F.linear(h, w_hh, b_hh)
        r = torch.sigmoid(xz_t[:, :H] + hz[:, :H])
        p = G.primary_gate(xz_t[:, H:2 * H] + hz[:, H:2 * H] + b_f, primary)
        n = torch.tanh(xz_t[:, 2 * H:3 * H] + r * hz[:, 2 * H:3 * H])
        a = None if aux == "-" else torch.sigmoid(xz_t[:, 3 * H:] + hz[:, 3 * H:] - (b_f if aux == "R" else 0))
        g = G.effective_gate(p, a, aux)
        h = (1 - g) * n + g * h
        ys.append(h)
        gs.append(g)
    return torch.stack(ys), h, torch.stack(gs).detach()


class GRUScan(torch.autograd.Function):
    """Fast scan in Python: forward under no_grad saves the gates; backward is written by hand."""

    @staticmethod
    def forward(ctx, xz, h0, w_hh, b_hh, b_f, keep, primary, aux):
        T, B, NH = xz.shape
        H = h0.shape[-1]
        xz = G.fold_forget_bias(xz, b_f, aux, 1, 3)
        ys = xz.new_empty(T, B, H)
        S = xz.new_empty(T, B, NH)  # r, p, n, [a] activated
        HN, Gs, hprev = xz.new_empty(T, B, H), xz.new_empty(T, B, H), xz.new_empty(T, B, H)
        w_t = w_hh.t()
        h = h0
        for t in range(T):
            if keep is not None:
                h = h * keep[t]
            hprev[t] = h
            hz = torch.addmm(b_hh, h, w_t)
            s = S[t]
            z = xz[t] + hz
            torch.sigmoid(z, out=s)
            if primary == "O":
                s[:, H:2 * H] = G.primary_gate(z[:, H:2 * H], "O")
            HN[t] = hz[:, 2 * H:3 * H]
            n = torch.tanh(torch.addcmul(xz[t, :, 2 * H:3 * H], s[:, :H], HN[t]), out=s[:, 2 * H:3 * H])
            g = G.effective_gate(s[:, H:2 * H], s[:, 3 * H:] if aux != "-" else None, aux)
            Gs[t] = g
            h = torch.addcmul(n, g, h - n, out=ys[t])
        ctx.save_for_backward(S, HN, Gs, hprev, w_hh, keep)
        ctx.cfg = (primary, aux)
        ctx.mark_non_differentiable(Gs)
        return ys, h.clone(), Gs

    @staticmethod
    def backward(ctx, dy, dhT, _dG):
        S, HN, Gs, hprev, w_hh, keep = ctx.saved_tensors
        primary, aux = ctx.cfg
        T, B, NH = S.shape
        H = hprev.shape[-1]
        dX, dHZ = torch.empty_like(S), torch.empty_like(S)
        dh = dhT.clone()
        for t in range(T - 1, -1, -1):
            dh = dh + dy[t]
            s, g = S[t], Gs[t]
            r, p, n = s[:, :H], s[:, H:2 * H], s[:, 2 * H:3 * H]
            dnpre = dh * (1 - g) * (1 - n * n)
            drpre = dnpre * HN[t] * (r - r * r)
            dzp, dza = G.gate_backward(dh * (hprev[t] - n), p, s[:, 3 * H:] if aux != "-" else None, primary, aux)
            dx, dhz = dX[t], dHZ[t]
            dx[:, :H] = drpre
            dx[:, H:2 * H] = dzp
            dx[:, 2 * H:3 * H] = dnpre
            if dza is not None:
                dx[:, 3 * H:] = dza
            dhz.copy_(dx)
            dhz[:, 2 * H:3 * H] = dnpre * r
            dh = dh * g + dhz @ w_hh
            if keep is not None:
                dh = dh * keep[t]
        dW = dHZ.reshape(-1, NH).t() @ hprev.reshape(-1, H)
        return dX, dh, dW, dHZ.sum((0, 1)), G.forget_bias_grad(dX.sum((0, 1)), H, aux, 1, 3), None, None, None


def gru_fast_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """The fast scan: the compiled loop on CPU when it built, the Triton kernels on CUDA when triton
    imports, else GRUScan. Same signature as the reference."""
    from . import triton_scan

    if library.runs(x):
        return kernels.gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
    if triton_scan.usable(x, h0.shape[-1]):
        out = triton_scan.gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
        if out is not None:  # None: the kernel does not build for this GPU (warned once)
            return out
    return GRUScan.apply(F.linear(x, w_ih, b_ih), h0, w_hh, b_hh, b_f, keep, primary, aux)


def scan_layers(scan, x: Tensor, h0: Tensor, layers, keep: Tensor | None, primary: str, aux: str,
                dropout: float = 0.0, training: bool = False):
    """Stacked layers: ``layers`` holds (w_ih, b_ih, w_hh, b_hh, b_f) per layer, h0 is [L, B, H].
    ``dropout`` acts on each layer's output but the last, in training mode (torch.nn.GRU's rule).

    Returns y [T, B, H] of the top layer, the final state ((h [L, B, H],)) and every layer's gates, flat.
    """
    hs, gs, inp = [], [], x
    for k, (w_ih, b_ih, w_hh, b_hh, b_f) in enumerate(layers):
        y, h, g = scan(inp, w_ih, b_ih, h0[k], w_hh, b_hh, b_f, keep, primary, aux)
        inp = between_layers(y, k, len(layers), dropout, training)
        hs.append(h)
        gs.append(g.flatten())
    return inp, (torch.stack(hs),), torch.cat(gs)


class GatedGRU(GridCore):
    """A GRU with gate grid cell ``cell`` on its keep gate (default ``UR``: the UR-GRU).

    Args:
        input_size, hidden_size, num_layers, batch_first: as torch.nn.GRU.
        cell: the grid cell XY, X in ``-COU`` (primary gate), Y in ``-MR`` (auxiliary gate).
        impl: ``"fast"`` (default) or ``"reference"`` (plain autograd loop).
        forget_bias, chrono_tmax, train_forget_bias, dropout: as for GatedLSTM.
    """

    state_size = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False, *,
                 cell: str = "UR", impl: str = "fast", forget_bias: float = 1.0, chrono_tmax: float = 1000.0,
                 train_forget_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first, cell, impl, forget_bias, chrono_tmax,
                         train_forget_bias, dropout)
        H, nb = self.hidden_size, self.num_blocks
        for k in range(num_layers):
            width = input_size if k == 0 else H
            params = {"weight_ih": (nb * H, width), "weight_hh": (nb * H, H), "bias_ih": (nb * H,), "bias_hh": (nb * H,)}
            for name, shape in params.items():
                p = nn.Parameter(torch.empty(shape))
                G.uniform_(p, H)
                if name.startswith("bias"):
                    with torch.no_grad():
                        p[H:2 * H].zero_()
                        p[3 * H:].zero_()
                setattr(self, f"{name}_l{k}", p)
            b_f = self.new_forget_bias()
            setattr(self, f"forget_bias_l{k}", b_f)

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        layers = [(getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}"), getattr(self, f"weight_hh_l{k}"),
                   getattr(self, f"bias_hh_l{k}"), getattr(self, f"forget_bias_l{k}")) for k in range(self.num_layers)]
        scan = gru_reference_scan if self.impl == "reference" else gru_fast_scan
        y, state, self._gates = scan_layers(scan, x, state[0], layers, keep, self.primary, self.aux,
                                            self.dropout, self.training)
        return y, state


class URGRU(GatedGRU):
    """The UR-GRU (``gru:UR``): UGI on the keep gate's bias and a refine gate."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 **options) -> None:
        options.setdefault("cell", "UR")
        super().__init__(input_size, hidden_size, num_layers, batch_first, **options)
