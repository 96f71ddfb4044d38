"""One registry for every memory core: ``make_core(spec, input_size, hidden_size, ...)``."""

from __future__ import annotations

from torch import nn

from .gated_gru import GatedGRU
from .gated_lstm import GatedLSTM
from .gates import AUXILIARY, PRIMARY
from .mlp import MLPCore
from .torch_rnn import GRU, LSTM

GRID_CELLS = tuple(x + y for x in PRIMARY for y in AUXILIARY)
ALIASES = {"urlstm": "lstm:UR", "urgru": "gru:UR"}
CORE_SPECS: tuple[str, ...] = ("lstm", "gru", "urlstm", "urgru", "mlp") + tuple(
    f"{family}:{cell}" for family in ("lstm", "gru") for cell in GRID_CELLS)


def make_core(spec: str, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
              **options) -> nn.Module:
    """Build a memory core.

    Args:
        spec: ``lstm``, ``gru`` (torch.nn.LSTM / GRU), ``urlstm`` (== ``lstm:UR``), ``urgru``
            (== ``gru:UR``), a grid cell ``lstm:XY`` / ``gru:XY`` (X in ``-COU``, Y in ``-MR``), or
            ``mlp`` (memoryless baseline).
        input_size, hidden_size, num_layers, batch_first: as torch.nn.LSTM.
        **options: ``dropout`` for every core (as torch.nn.LSTM's: between stacked layers, in
            training mode); ``impl`` ("fast" | "reference") for every recurrent core; for grid cells
            also ``forget_bias``, ``chrono_tmax``, ``train_forget_bias``.
    Returns:
        A module with ``initial_state``, ``forward(x, state, reset)``, ``step`` and ``gate_stats``.
    """
    if not isinstance(spec, str) or ALIASES.get(spec, spec) not in CORE_SPECS:
        raise ValueError(f"unknown core {spec!r}; valid cores: {', '.join(CORE_SPECS)}")
    spec = ALIASES.get(spec, spec)
    allowed = {"impl", "dropout"} if spec in ("lstm", "gru") else {"dropout"} if spec == "mlp" else {
        "impl", "dropout", "forget_bias", "chrono_tmax", "train_forget_bias"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"core {spec!r} does not take option(s) {sorted(unknown)}; it takes {sorted(allowed) or 'none'}")
    args = (input_size, hidden_size, num_layers, batch_first)
    if spec == "lstm":
        return LSTM(*args, **options)
    if spec == "gru":
        return GRU(*args, **options)
    if spec == "mlp":
        return MLPCore(*args, **options)
    family, cell = spec.split(":")
    return (GatedLSTM if family == "lstm" else GatedGRU)(*args, cell=cell, **options)
