"""`stack:K`: the frame-stack baseline. An MLP over the last K inputs; its state is the window.

It remembers exactly the last K inputs and nothing before them, so a task it solves needs no memory
longer than K steps, and a task it fails at needs more. The state is one tensor [K-1, B, D]: the
previous K-1 inputs, oldest first (batch on dim 1, as every core's state), zeros before an episode
starts; ``stack:1`` is the ``mlp`` core with its input taken as a window of one (state ``()``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import CoreMixin, State, check_dropout, check_size
from .mlp import run_tanh_layers, tanh_layers


class StackCore(CoreMixin, nn.Module):
    """``num_layers`` tanh layers of width ``hidden_size`` over the concatenation of the last
    ``window`` inputs [K·D] (``dropout`` between them as torch.nn.LSTM's).

    Args:
        input_size, hidden_size, num_layers, batch_first: as torch.nn.LSTM (num_layers: MLP depth).
        window: K, how many inputs (the current one included) each output sees.
        impl: "fast" (every window at once, resets by a mask) or "reference" (a loop over steps).
        dropout: as torch.nn.LSTM's, between the MLP layers.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = False, window: int = 4, impl: str = "fast",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.window = check_size("window", window)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout, self.num_layers)
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        self.impl = impl
        self.state_size = 0 if window == 1 else 1
        self.net = tanh_layers(window * input_size, hidden_size, num_layers)

    def state_shape(self, batch_size: int) -> tuple[int, int, int]:
        """The window of previous inputs: [K-1, B, D]."""
        return (self.window - 1, batch_size, self.input_size)

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        T, B, D = x.shape
        past = state[0] if state else x.new_zeros(0, B, D)  # [K-1, B, D]
        if self.impl == "reference":
            return self._loop(x, past, keep)
        K = self.window
        seq = torch.cat([past, x])                                         # [K-1+T, B, D]
        # slices, not Tensor.unfold: the ONNX exporter cannot take unfold with a dynamic batch
        windows = torch.stack([seq[j:j + T] for j in range(K)], dim=2)   # [T, B, K, D]
        if keep is not None:
            # slot j of step t holds the input of step t-K+1+j; it belongs to step t's episode
            # iff it is not older than the last episode start at or before t
            steps = torch.arange(T, device=x.device)
            start = torch.where(keep[..., 0] == 0, steps[:, None], -K).cummax(0).values  # [T, B]
            slot_step = steps[:, None] - (K - 1) + torch.arange(K, device=x.device)    # [T, K]
            inside = slot_step[:, None, :] >= start[:, :, None]                        # [T, B, K]
            windows = windows * inside.unsqueeze(-1).to(x.dtype)
        y = run_tanh_layers(self.net, windows.reshape(T, B, K * D), self.dropout, self.training)
        final = windows[-1, :, 1:].transpose(0, 1)  # [K-1, B, D]
        return y, (final,) if self.state_size else ()

    def _loop(self, x: Tensor, past: Tensor, keep: Tensor | None):
        """The reference: one step at a time, the reset convention applied to the window itself."""
        T, B, _ = x.shape
        ys = []
        for t in range(T):
            if keep is not None:
                past = past * keep[t]  # [K-1, B, D] * [B, 1]
            window = torch.cat([past, x[t:t + 1]])  # [K, B, D]
            ys.append(run_tanh_layers(self.net, window.transpose(0, 1).reshape(B, -1), self.dropout,
                                      self.training))
            past = window[1:]
        return torch.stack(ys), (past,) if self.state_size else ()

    def gate_stats(self) -> None:
        return None

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"window={self.window}, impl={self.impl!r}, batch_first={self.batch_first}"
                + (f", dropout={self.dropout}" if self.dropout else ""))
