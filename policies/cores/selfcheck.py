"""A run-time check of the compiled scans: every cell's float32 ops against its float64 ops.

The float32 loops are the vectorised code that ``-march=native`` shapes for this CPU; the float64
loops are plain scalar code. ``check_all()`` runs both on small inputs with resets, forward and
backward, and raises if they disagree. ``build_and_check`` runs in the child process that
library.py starts for the first build, so a library that cannot run here never reaches a training
process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import kernels, library

LSTM_CELLS = [(p, a) for p in "-O" for a in "-MRI" if not (p == "O" and a == "I")]
GRU_CELLS = [(p, a) for p in "-O" for a in "-MR"]


def _inputs(family: str, aux: str, T: int, B: int, D: int, H: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    nb = 4 if aux != "-" else 3
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5  # noqa: E731
    keep = (torch.rand(T, B, generator=g) > 0.3).double()
    if family == "lstm":
        return [rand(T, B, D), rand(nb * H, D), rand(nb * H), rand(B, H), rand(B, H), rand(nb * H, H), rand(H), keep]
    return [rand(T, B, D), rand(nb * H, D), rand(nb * H), rand(B, H), rand(nb * H, H), rand(nb * H), rand(H), keep]


def _run(family: str, primary: str, aux: str, args: list[torch.Tensor], dtype: torch.dtype):
    leaves = [a.to(dtype).requires_grad_(i < len(args) - 1) for i, a in enumerate(args)]
    scan = kernels.CppLSTMScan if family == "lstm" else kernels.CppGRUScan
    out = scan.apply(*leaves, primary, aux)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
               for o in out if o.requires_grad)
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
    return [o.detach().double() for o in out] + [d.double() for d in grads]


def check_all(T: int = 6, B: int = 5, D: int = 7, H: int = 19) -> None:
    """Raise AssertionError naming the first cell whose float32 results differ from float64's.

    H = 19 is odd on purpose: the vector loops' remainders are exercised too.
    """
    cases = [("lstm", p, a) for p, a in LSTM_CELLS] + [("gru", p, a) for p, a in GRU_CELLS]
    for i, (family, primary, aux) in enumerate(cases):
        args = _inputs(family, aux, T, B, D, H, seed=i)
        want = _run(family, primary, aux, args, torch.float64)
        got = _run(family, primary, aux, args, torch.float32)
        with torch.no_grad():  # acting: the op alone, no saved activations
            scan = kernels.lstm_scan if family == "lstm" else kernels.gru_scan
            got[0] = scan(*[a.float() for a in args], primary, aux)[0].double()
        for k, (w, v) in enumerate(zip(want, got)):
            if not torch.allclose(v, w, rtol=1e-3, atol=1e-4) or not torch.isfinite(v).all():
                err = (v - w).abs().max().item()
                raise AssertionError(f"compiled scan self-check failed: {family}:{primary}{aux} output {k} "
                                     f"differs from float64 by {err:.3g}")


def build_and_check(folder: Path) -> None:
    """In the build's child process: build the library into ``folder``, check every op, mark it passed."""
    library.compile_into(folder)
    check_all()
    library.mark_passed(folder)
