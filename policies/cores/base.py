"""What every memory core shares: argument checks, batch_first, default state and the reset convention.

Reset convention (urlstm.md section 4): ``reset[t, b]`` True means observation t of element b starts
a new episode; before step t consumes ``x[t]`` that element's state is replaced by the initial state
(zeros), i.e. ``state = state * keep[t]`` with ``keep = ~reset``.

A core may learn its initial state instead (``learn_initial_state()``): one parameter per state
tensor, [num_layers, 1, H] (zeros at first), broadcast over the batch, so that
``state = state * keep[t] + s0 * (1 - keep[t])``. The scans themselves only know how to zero a
state, so a sequence with resets runs as segments cut at the steps where some element resets, the
state being replaced in between; a gradient reaches ``s0`` from every reset inside a sequence.
"""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import gates as G

State = tuple[Tensor, ...]


def check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_dropout(dropout: object, num_layers: int) -> float:
    """torch.nn.LSTM's check of ``dropout``: a number in [0, 1]; a warning when it can do nothing
    (one layer: dropout acts between stacked layers only)."""
    value = float(dropout)  # what torch does first: None or an object raises its TypeError
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= value <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of "
                         "an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                      f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                      f"num_layers={num_layers}", stacklevel=3)
    return float(dropout)


def between_layers(y: Tensor, k: int, num_layers: int, dropout: float, training: bool) -> Tensor:
    """Layer ``k``'s output as the next layer's input: dropout after every layer but the last, in
    training mode only (torch.nn.LSTM's rule; the final states are never dropped)."""
    if dropout > 0 and training and k < num_layers - 1:
        return F.dropout(y, dropout, training=True)
    return y


class CoreMixin:
    """Mixed into an ``nn.Module``; the subclass sets ``state_size`` and implements ``_scan``.

    ``_scan(x, state, keep) -> (y, state)`` runs the time-major sequence x [T, B, D] from the
    state tuple (each [num_layers, B, H]), with ``keep`` [T, B, 1] (1.0 keeps, 0.0 resets) or None.
    """

    state_size: int = 2  # tensors in the state tuple: (h, c) for LSTM-like, (h,) for GRU-like
    input_size: int
    hidden_size: int
    num_layers: int
    batch_first: bool

    def state_shape(self, batch_size: int) -> tuple[int, int, int]:
        """Shape of each state tensor: [num_layers, B, H] (batch on dim 1 for every core)."""
        return (self.num_layers, batch_size, self.hidden_size)

    @property
    def state0(self) -> nn.ParameterList | None:
        """The learned initial state (``learn_initial_state``), one [num_layers, 1, H] parameter
        per state tensor; None for zeros."""
        return self._modules.get("state0")

    def learn_initial_state(self) -> None:
        """Make the state every episode starts from a parameter (zeros at first; see the module
        docstring). A core without state (``mlp``, ``stack:1``) has nothing to learn."""
        if self.state0 is None:
            ref = next(self.parameters(), None)
            shape = self.state_shape(1)
            self.state0 = nn.ParameterList(  # nn.Module.__setattr__ registers it under _modules
                nn.Parameter(torch.zeros(shape, device=None if ref is None else ref.device))
                for _ in range(self.state_size))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        """A tuple of ``state_size`` tensors of ``state_shape(batch_size)``: zeros, or the learned
        initial state (detached: the gradient reaches it through the resets)."""
        ref = next(self.parameters(), None)
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        shape = self.state_shape(batch_size)
        if self.state0 is not None:
            return tuple(s.detach().to(device, dtype).expand(shape).clone() for s in self.state0)
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.state_size))

    def apply_reset(self, state: State, keep: Tensor) -> State:
        """The state an element holds before a step: ``keep`` [B, 1] (or [1, B, 1]) is 1.0 to keep
        it and 0.0 at an episode start, which gives zeros or the learned initial state."""
        if self.state0 is None:
            return tuple(s * keep for s in state)
        return tuple(s * keep + s0 * (1 - keep) for s, s0 in zip(state, self.state0))

    def forward(self, x: Tensor, state: State | Tensor | None = None, reset: Tensor | None = None):
        """Run a sequence.

        Args:
            x: [T, B, D] (or [B, T, D] when ``batch_first``).
            state: tuple of [num_layers, B, H] tensors, or None for zeros. A bare tensor is taken
                as ``(h,)`` and a bare tensor is returned, as torch.nn.GRU does.
            reset: [T, B] (or [B, T]) bool, True where observation t starts a new episode.
        Returns:
            y [T, B, H] (or [B, T, H]) and the final state (same structure as given).
        """
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"input must have shape [T, B, D] (or [B, T, D] with batch_first), got {shape}")
        if self.batch_first:
            x = x.transpose(0, 1)
            reset = reset.transpose(0, 1) if reset is not None else None
        y, state = self._run(x, state, reset)
        return (y.transpose(0, 1) if self.batch_first else y), state

    def step(self, x: Tensor, state: State | Tensor | None = None, reset: Tensor | None = None):
        """One time step for acting: x [B, D], reset [B] bool; returns y [B, H] and the new state."""
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"step input must have shape [B, D], got {tuple(getattr(x, 'shape', ()))}")
        y, state = self._run(x.unsqueeze(0), state, None if reset is None else reset.unsqueeze(0))
        return y.squeeze(0), state

    def gate_stats(self) -> dict[str, Tensor] | None:
        """Effective forget-gate values of the last forward (all layers, flattened, detached).

        Returns {"gate": g values, "timescale": 1/(1-g)} or None before any forward.
        """
        g = self._last_gates()
        if g is None:
            return None
        g = g.detach().flatten().float()
        return {"gate": g, "timescale": 1.0 / (1.0 - g).clamp_min(1e-6)}

    def _last_gates(self) -> Tensor | None:
        return getattr(self, "_gates", None)

    def _run(self, x: Tensor, state, reset):
        T, B, D = x.shape
        if D != self.input_size:
            raise ValueError(f"input width {D} does not match input_size {self.input_size}")
        bare = isinstance(state, Tensor)
        if bare:
            state = (state,)
        if state is None:
            state = self.initial_state(B, x.device, x.dtype)
        state = tuple(state)
        expected = self.state_shape(B)
        if len(state) != self.state_size or any(tuple(s.shape) != expected for s in state):
            got = [tuple(s.shape) for s in state]
            raise ValueError(f"state must be {self.state_size} tensor(s) of shape {list(expected)}, got {got}")
        keep = None
        if reset is not None:
            if tuple(reset.shape) != (T, B):
                raise ValueError(f"reset must have shape [T, B] = [{T}, {B}], got {tuple(reset.shape)}")
            if bool(reset.any()):
                keep = (~reset.bool()).to(x.dtype).unsqueeze(-1)  # [T, B, 1]
        if keep is not None and self.state0 is not None and len(self.state0):
            y, state = self._scan_segments(x, state, keep)
        else:
            y, state = self._scan(x, state, keep)
        return y, (state[0] if bare else state)

    def _scan_segments(self, x: Tensor, state: State, keep: Tensor):
        """``_scan`` with a learned initial state: the sequence cut before every step where some
        element resets, ``apply_reset`` between the pieces (each piece runs without resets).
        ``gate_stats`` then describes the last piece."""
        cuts = (keep[..., 0] == 0).any(1).nonzero().flatten().tolist() + [x.shape[0]]
        ys, start = [], 0
        for cut in cuts:
            if cut > start:
                y, state = self._scan(x[start:cut], state, None)
                ys.append(y)
            if cut < x.shape[0]:
                state = self.apply_reset(state, keep[cut])
            start = cut
        return (ys[0] if len(ys) == 1 else torch.cat(ys)), state


class GridCore(CoreMixin, nn.Module):
    """What the LSTM and GRU gate-grid cores share: arguments, the grid cell, the forget bias init."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, batch_first: bool, cell: str,
                 impl: str, forget_bias: float, chrono_tmax: float, train_forget_bias: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout, self.num_layers)
        self.primary, self.aux = G.parse_grid(cell)
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        self.impl = impl
        self.num_blocks = 3 if self.aux == "-" else 4
        self._bias_init = dict(constant=forget_bias, chrono_tmax=chrono_tmax)
        self._train_forget_bias = train_forget_bias

    def new_forget_bias(self) -> nn.Parameter:
        """A [H] forget bias initialised for this cell's primary gate."""
        b_f = nn.Parameter(torch.empty(self.hidden_size), requires_grad=self._train_forget_bias)
        G.init_forget_bias(b_f, self.primary, **self._bias_init)
        return b_f

    @property
    def cell(self) -> str:
        return self.primary + self.aux

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, cell={self.cell!r}, "
                f"impl={self.impl!r}, batch_first={self.batch_first}"
                + (f", dropout={self.dropout}" if self.dropout else ""))
