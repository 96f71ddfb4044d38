"""`mlp`: the memoryless baseline with the core interface (its state is the empty tuple)."""

from __future__ import annotations

from torch import Tensor, nn

from .base import CoreMixin, State, between_layers, check_dropout, check_size


def tanh_layers(input_size: int, hidden_size: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` (Linear, Tanh) pairs: input_size -> hidden_size -> ... -> hidden_size."""
    layers: list[nn.Module] = []
    for k in range(num_layers):
        layers += [nn.Linear(input_size if k == 0 else hidden_size, hidden_size), nn.Tanh()]
    return nn.Sequential(*layers)


def run_tanh_layers(net: nn.Sequential, x: Tensor, dropout: float, training: bool) -> Tensor:
    """Apply ``tanh_layers`` to x [..., D] -> [..., H], with dropout between the layers as
    torch.nn.LSTM's (not after the last, training mode only)."""
    num_layers = len(net) // 2
    for k in range(num_layers):
        x = between_layers(net[2 * k + 1](net[2 * k](x)), k, num_layers, dropout, training)
    return x


class MLPCore(CoreMixin, nn.Module):
    """``num_layers`` tanh layers of width ``hidden_size`` applied to each step on its own; ``dropout``
    between them as torch.nn.LSTM's (not after the last, training mode only)."""

    state_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout, self.num_layers)
        self.net = tanh_layers(input_size, hidden_size, num_layers)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return ()

    def _scan(self, x: Tensor, state: State, keep: Tensor | None):
        return run_tanh_layers(self.net, x, self.dropout, self.training), ()

    def gate_stats(self) -> None:
        return None
