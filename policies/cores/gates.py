"""Gate maths of the UR gate grid (urlstm.md sections 1 and 3), shared by every grid core.

X (primary gate p): ``-`` sigmoid, constant forget bias; ``C`` sigmoid, chrono init; ``O`` cumax;
``U`` sigmoid, uniform gate initialization (UGI).
Y (auxiliary gate a): ``-`` none (g = p); ``R`` refine gate; ``M`` master gate.

The forward functions are used by the reference cells (through autograd) and the fast scans
(under no_grad); ``gate_backward`` is their hand-written derivative, used by the fast scans.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PRIMARY = ("-", "C", "O", "U")
AUXILIARY = ("-", "M", "R")


def init_forget_bias(bias: Tensor, kind: str, *, constant: float = 1.0, chrono_tmax: float = 1000.0) -> None:
    """Fill the [H] forget-gate bias in place for primary-gate kind ``kind``.

    ``-``: ``constant``; ``C``: ``log(U[1, chrono_tmax - 1])``; ``O``: 0;
    ``U``: ``logit(U[1/H, 1 - 1/H])`` (UGI). Draws from torch's global RNG.
    """
    hidden = bias.numel()
    with torch.no_grad():
        if kind == "-":
            bias.fill_(constant)
        elif kind == "C":
            if chrono_tmax <= 2:
                raise ValueError(f"chrono_tmax must be > 2, got {chrono_tmax}")
            bias.uniform_(1.0, chrono_tmax - 1.0).log_()
        elif kind == "O":
            bias.zero_()
        elif kind == "U":
            if hidden == 1:  # U[1/1, 1 - 1/1] is degenerate: use the midpoint 0.5
                bias.zero_()
                return
            lo = 1.0 / hidden
            u = torch.empty_like(bias).uniform_(lo, 1.0 - lo)
            bias.copy_(torch.log(u) - torch.log1p(-u))
        else:
            raise ValueError(f"unknown primary gate kind {kind!r}; expected one of {PRIMARY}")


def primary_gate(zp: Tensor, kind: str) -> Tensor:
    """p from its pre-activation [.., H] (bias already added): sigmoid, or cumax for ``O``."""
    if kind == "O":
        return torch.cumsum(torch.softmax(zp, dim=-1), dim=-1)
    return torch.sigmoid(zp)


def effective_gate(p: Tensor, a: Tensor | None, aux: str) -> Tensor:
    """g from the primary gate p and the activated auxiliary gate a (None when aux is ``-``).

    R: ``g = a*(1-(1-p)**2) + (1-a)*p**2 == p**2 + 2*a*(p - p**2)``;
    M: ``g = p*(p + (1-p)*a) == p**2 + a*(p - p**2)``.
    """
    if aux == "-":
        return p
    pp = p * p
    return torch.addcmul(pp, a, p - pp, value=2.0 if aux == "R" else 1.0)


def gate_backward(dg: Tensor, p: Tensor, a: Tensor | None, primary: str, aux: str) -> tuple[Tensor, Tensor | None]:
    """Gradients of the primary and auxiliary pre-activations given dL/dg.

    Returns (dzp, dza), dza None when aux is ``-``.
    """
    if aux == "-":
        dp, dza = dg, None
    else:
        q = p - p * p  # p (1 - p)
        if aux == "R":
            dp = dg * (2.0 * p + 2.0 * a * (1.0 - 2.0 * p))
            dza = dg * 2.0 * q * (a - a * a)
        else:  # M
            dp = dg * (2.0 * p * (1.0 - a) + a)
            dza = dg * q * (a - a * a)
    if primary == "O":
        s = torch.diff(p, dim=-1, prepend=torch.zeros_like(p[..., :1]))  # softmax values
        ds = torch.flip(torch.cumsum(torch.flip(dp, (-1,)), -1), (-1,))  # reverse cumsum
        dzp = s * (ds - (s * ds).sum(-1, keepdim=True))
    else:
        dzp = dp * (p - p * p)
    return dzp, dza


def parse_grid(cell: str) -> tuple[str, str]:
    """'UR' -> ('U', 'R'); raises ValueError for anything outside the grid."""
    if len(cell) != 2 or cell[0] not in PRIMARY or cell[1] not in AUXILIARY:
        raise ValueError(f"gate grid cell must be XY with X in {''.join(PRIMARY)} and Y in {''.join(AUXILIARY)}, got {cell!r}")
    return cell[0], cell[1]


def uniform_(t: Tensor, hidden_size: int) -> None:
    """torch.nn.LSTM's default init: U(-1/sqrt(H), 1/sqrt(H))."""
    k = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        t.uniform_(-k, k)


def fold_forget_bias(z: Tensor, b_f: Tensor, aux: str, p_block: int, a_block: int) -> Tensor:
    """z [.., nb*H] with b_f added to block ``p_block`` and, for a refine gate, subtracted from ``a_block``."""
    H = b_f.shape[-1]
    z = z.clone()
    z[..., p_block * H:(p_block + 1) * H] += b_f
    if aux == "R":
        z[..., a_block * H:(a_block + 1) * H] -= b_f
    return z


def forget_bias_grad(dbias: Tensor, H: int, aux: str, p_block: int, a_block: int) -> Tensor:
    """dL/db_f from the pre-activation gradients summed over time and batch, dbias [nb*H] (the
    adjoint of fold_forget_bias: + on the primary block, - on a refine gate's block)."""
    g = dbias[p_block * H:(p_block + 1) * H]
    return g - dbias[a_block * H:(a_block + 1) * H] if aux == "R" else g.clone()
