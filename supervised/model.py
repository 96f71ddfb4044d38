"""A memory core from policies.cores followed by a linear read-out."""

from __future__ import annotations

from torch import Tensor, nn

from policies.cores import make_core


class SequenceModel(nn.Module):
    """x [T, B, D] -> core -> y [T, B, H] -> linear head on the last ``readout`` steps -> [readout, B, O]."""

    def __init__(self, core: str, input_size: int, hidden_size: int, output_size: int, readout: int = 1,
                 num_layers: int = 1):
        super().__init__()
        self.core = make_core(core, input_size, hidden_size, num_layers=num_layers)
        self.head = nn.Linear(hidden_size, output_size)
        self.readout = readout

    def forward(self, x: Tensor) -> Tensor:
        """x [T, B, D] (time-major) -> outputs of the last ``readout`` steps [readout, B, O]."""
        y, _ = self.core(x)  # [T, B, H]
        return self.head(y[-self.readout:])
