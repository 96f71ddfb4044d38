"""One registry for every memory core: ``make_core(spec, input_size, hidden_size, ...)``."""

from __future__ import annotations

import re

from torch import nn

from .gated_gru import GatedGRU
from .gated_lstm import GatedLSTM
from .gates import AUXILIARY, PRIMARY
from .mlp import MLPCore
from .stack import StackCore
from .torch_rnn import GRU, LSTM

GRID_CELLS = tuple(x + y for x in PRIMARY for y in AUXILIARY)
ALIASES = {"urlstm": "lstm:UR", "urgru": "gru:UR"}
NAMED = ("lstm", "gru", "urlstm", "urgru", "mlp")
CORE_SPECS: tuple[str, ...] = NAMED + tuple(
    f"{family}:{cell}" for family in ("lstm", "gru") for cell in GRID_CELLS)
"""Every core without a parameter in its name; ``stack:K`` (K >= 1) is valid besides these."""
STACK_FORM = "stack:K with K an integer >= 1 (e.g. stack:4)"


def check_core(spec: object) -> str:
    """The canonical name of a core spec (``urlstm`` -> ``lstm:UR``); ValueError (one line) if invalid."""
    if isinstance(spec, str) and spec.startswith("stack"):
        if re.fullmatch(r"stack:[0-9]+", spec) and int(spec[6:]) >= 1:
            return f"stack:{int(spec[6:])}"
        raise ValueError(f"invalid core {spec!r}: the frame-stack core is {STACK_FORM}")
    if not isinstance(spec, str) or ALIASES.get(spec, spec) not in CORE_SPECS:
        valid = ", ".join((*NAMED, "stack:K", *CORE_SPECS[len(NAMED):]))
        raise ValueError(f"unknown core {spec!r}; valid cores: {valid}")
    return ALIASES.get(spec, spec)


def make_core(spec: str, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
              **options) -> nn.Module:
    """Build a memory core.

    Args:
        spec: ``lstm``, ``gru`` (torch.nn.LSTM / GRU), ``urlstm`` (== ``lstm:UR``), ``urgru``
            (== ``gru:UR``), a grid cell ``lstm:XY`` / ``gru:XY`` (X in ``-COU``, Y in ``-MR``), or
            ``mlp`` (memoryless baseline), or ``stack:K`` (an MLP over the last K inputs).
        input_size, hidden_size, num_layers, batch_first: as torch.nn.LSTM.
        **options: ``dropout`` for every core (as torch.nn.LSTM's: between stacked layers, in
            training mode); ``impl`` ("fast" | "reference") for every core but ``mlp``; for grid cells
            also ``forget_bias``, ``chrono_tmax``, ``train_forget_bias``; ``learn_initial_state``
            (bool) for every core: episodes start from a learned state instead of zeros.
    Returns:
        A module with ``initial_state``, ``forward(x, state, reset)``, ``step`` and ``gate_stats``.
    """
    spec = check_core(spec)
    learn_initial_state = bool(options.pop("learn_initial_state", False))
    stack = spec.startswith("stack:")
    allowed = {"impl", "dropout"} if spec in ("lstm", "gru") or stack else {"dropout"} if spec == "mlp" else {
        "impl", "dropout", "forget_bias", "chrono_tmax", "train_forget_bias"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"core {spec!r} does not take option(s) {sorted(unknown)}; it takes {sorted(allowed) or 'none'}")
    args = (input_size, hidden_size, num_layers, batch_first)
    if spec == "lstm":
        core = LSTM(*args, **options)
    elif spec == "gru":
        core = GRU(*args, **options)
    elif spec == "mlp":
        core = MLPCore(*args, **options)
    elif stack:
        core = StackCore(*args, window=int(spec[6:]), **options)
    else:
        family, cell = spec.split(":")
        core = (GatedLSTM if family == "lstm" else GatedGRU)(*args, cell=cell, **options)
    if learn_initial_state:
        core.learn_initial_state()
    return core
