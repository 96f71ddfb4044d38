"""`lstm` and `gru`: torch.nn.LSTM / torch.nn.GRU themselves, made reset-aware.

The fast path runs torch's fused kernel (oneDNN on CPU, cuDNN on GPU) on each time segment between
resets, so there is no Python loop over steps when nothing resets. On CPU, with the compiled scan
built, GRU always runs the gate-grid GRU's compiled scan (several times faster than torch's CPU GRU)
and LSTM runs the grid's compiled LSTM loop with an untied input gate for one-step calls and where
resets split a sequence into many segments (one call, resets inside, instead of one per segment).
``impl="reference"`` is a plain autograd loop of the textbook equations, kept to test the fast
path against. ``dropout`` is torch's: on each layer's output but the last, in training mode, applied
between the per-layer calls of every path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import gated_gru, gated_lstm, kernels, library
from .base import CoreMixin, State, between_layers, check_size


def segment_starts(keep: Tensor | None, T: int) -> list[int]:
    """Start indices of the maximal time segments with no reset inside (t = 0 always starts one)."""
    if keep is None:
        return [0]
    hit = (keep[1:, :, 0] == 0).any(dim=1).nonzero().flatten() + 1
    return [0] + hit.tolist()


class _TorchRNN(CoreMixin):
    """Shared by LSTM and GRU: per-layer segmented fused kernel, lazy gate statistics."""

    def _setup(self, input_size: int, hidden_size: int, num_layers: int, impl: str) -> None:
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_size("num_layers", num_layers)
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")

    def _scan(self, x: Tensor, state: State, keep: Tensor | None, starts: list[int] | None = None):
        T = x.shape[0]
        starts = (segment_starts(keep, T) if starts is None else starts) + [T]
        finals: list[list[Tensor]] = [[] for _ in range(self.state_size)]
        self._io = []
        inp = x
        for k in range(self.num_layers):
            w = self.all_weights[k]
            s = [t[k] for t in state]
            if self.impl == "reference":
                y, s = self._reference_layer(inp, s, w, keep)
            else:
                outs = []
                for a, b in zip(starts[:-1], starts[1:]):
                    if keep is not None:
                        s = [t * keep[a] for t in s]
                    out, s = self._kernel(inp[a:b], s, w)
                    outs.append(out)
                y = outs[0] if len(outs) == 1 else torch.cat(outs)
            self._io.append((inp.detach(), y.detach(), state[0][k].detach(), keep))
            for i, t in enumerate(s):
                finals[i].append(t)
            inp = between_layers(y, k, self.num_layers, self.dropout, self.training)
        return inp, tuple(torch.stack(f) for f in finals)

    def _last_gates(self) -> Tensor | None:
        """Forget (LSTM) / update (GRU) gate recomputed from the stored layer inputs and outputs."""
        io = getattr(self, "_io", None)
        if not io:
            return getattr(self, "_gates", None)  # GRU on CPU: the scan's own gates
        H, gates = self.hidden_size, []
        with torch.no_grad():
            for k, (inp, y, h0, keep) in enumerate(io):
                w_ih, w_hh, b_ih, b_hh = self.all_weights[k]
                hprev = torch.cat([h0.unsqueeze(0), y[:-1]])
                if keep is not None:
                    hprev = hprev * keep
                z = F.linear(inp, w_ih[H:2 * H], b_ih[H:2 * H]) + F.linear(hprev, w_hh[H:2 * H], b_hh[H:2 * H])
                gates.append(torch.sigmoid(z).flatten())
        return torch.cat(gates)


class LSTM(_TorchRNN, nn.LSTM):
    """Untied LSTM, numerically torch.nn.LSTM (same parameter names, layout and init)."""

    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 impl: str = "fast", dropout: float = 0.0) -> None:
        self._setup(input_size, hidden_size, num_layers, impl)
        nn.LSTM.__init__(self, input_size, hidden_size, num_layers, batch_first=batch_first, dropout=dropout)
        self.impl = impl

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        # On CPU a oneDNN call costs about as much as 12 steps of its fused kernel, which runs about
        # twice as fast per step as the compiled loop (benchmarks/cores.py --reset-prob): the loop
        # wins for short sequences (acting: T = 1) and where resets cut a sequence into more than
        # T / 12 segments (one oneDNN call each). The grid's LSTM loop with an untied input gate
        # ("I") is torch.nn.LSTM's cell, on torch's weights as they are (blocks i, f, g, o).
        if self.impl == "reference" or not library.runs(x):
            return super()._scan(x, state, keep)
        starts = segment_starts(keep, x.shape[0])
        if len(starts) * 12 <= x.shape[0]:
            return super()._scan(x, state, keep, starts)
        no_bias = x.new_zeros(self.hidden_size)
        layers = [(w_ih, b_ih + b_hh, w_hh, no_bias) for w_ih, w_hh, b_ih, b_hh in self.all_weights]
        y, state, self._gates = gated_lstm.scan_layers(kernels.lstm_scan, x, state, layers, keep, "-", "I",
                                                       self.dropout, self.training)
        self._io = []
        return y, state

    def _kernel(self, x, s, w):
        out, h, c = torch.lstm(x, (s[0].unsqueeze(0), s[1].unsqueeze(0)), w, True, 1, 0.0, self.training, False, False)
        return out, [h[0], c[0]]

    @staticmethod
    def _reference_layer(x, s, w, keep):
        w_ih, w_hh, b_ih, b_hh = w
        h, c = s
        xz = F.linear(x, w_ih, b_ih)
        ys = []
        for t, xz_t in enumerate(xz.unbind(0)):
            if keep is not None:
                h, c = h * keep[t], c * keep[t]
            i, f, g, o = (xz_t + F.linear(h, w_hh, b_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys), [h, c]


class GRU(_TorchRNN, nn.GRU):
    """GRU, numerically torch.nn.GRU (same parameter names, layout and init)."""

    state_size = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 impl: str = "fast", dropout: float = 0.0) -> None:
        self._setup(input_size, hidden_size, num_layers, impl)
        nn.GRU.__init__(self, input_size, hidden_size, num_layers, batch_first=batch_first, dropout=dropout)
        self.impl = impl

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        if self.impl == "reference" or x.device.type != "cpu":
            return super()._scan(x, state, keep)
        # on CPU torch.gru is a loop of small ops, several times slower than torch.lstm's oneDNN
        # kernel; the gate-grid GRU's compiled scan with a plain sigmoid keep gate and no extra
        # bias is the same GRU (same equations, r applied to W_hn h + b_hn)
        no_bias = x.new_zeros(self.hidden_size)
        layers = [(w_ih, b_ih, w_hh, b_hh, no_bias) for w_ih, w_hh, b_ih, b_hh in self.all_weights]
        y, state, self._gates = gated_gru.scan_layers(gated_gru.gru_fast_scan, x, state[0], layers, keep, "-", "-",
                                                      self.dropout, self.training)
        self._io = []
        return y, state

    def _kernel(self, x, s, w):
        out, h = torch.gru(x, s[0].unsqueeze(0), w, True, 1, 0.0, self.training, False, False)
        return out, [h[0]]

    @staticmethod
    def _reference_layer(x, s, w, keep):
        w_ih, w_hh, b_ih, b_hh = w
        (h,) = s
        xz = F.linear(x, w_ih, b_ih)
        ys = []
        for t, xz_t in enumerate(xz.unbind(0)):
            if keep is not None:
                h = h * keep[t]
            xr, xu, xn = xz_t.chunk(3, -1)
            hr, hu, hn = F.linear(h, w_hh, b_hh).chunk(3, -1)
            r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
            n = torch.tanh(xn + r * hn)
            h = (1 - u) * n + u * h
            ys.append(h)
        return torch.stack(ys), [h]
