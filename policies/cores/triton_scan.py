"""The Triton scans of the gate grid on CUDA: when they are used, and the fallback when they cannot be.

``usable(x, hidden)`` is True on a CUDA tensor when triton imports, the dtype is float32, bfloat16
or float64 and the hidden size is at most ``triton_gates.MAX_HIDDEN``; otherwise the caller runs
the Python scan, and a warning says why, once per reason. ``lstm_scan`` / ``gru_scan`` run one
layer (see triton_lstm.py, triton_gru.py) and return None, after one warning, when the kernels do
not compile for this GPU (the caller then falls back too). ``URLSTM_NO_TRITON=1`` turns them off.
"""

from __future__ import annotations

import os
import warnings

import torch

_STATE: dict[str, bool] = {}
_WARNED: set[str] = set()
_FAILED: set[str] = set()
DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"urlstm: Triton scan not used on CUDA, using the Python scan ({reason})", RuntimeWarning,
                      stacklevel=3)


def available() -> bool:
    """True when the Triton kernels imported (tried once); else warns once why."""
    if "ok" not in _STATE:
        reason = ""
        if os.environ.get("URLSTM_NO_TRITON", "") not in ("", "0"):
            reason = "URLSTM_NO_TRITON is set"
        else:
            try:
                from . import triton_gru, triton_lstm  # noqa: F401
            except Exception as err:  # noqa: BLE001  (no triton for this platform, an old triton, ...)
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'triton did not import'}"
        _STATE["ok"] = not reason
        if reason:
            _warn_once(reason)
    return _STATE["ok"]


def usable(x: torch.Tensor, hidden: int) -> bool:
    """Whether the fast scans of ``x`` run on the Triton kernels (CUDA only)."""
    if x.device.type != "cuda" or not available():
        return False
    from .triton_gates import MAX_HIDDEN

    if x.dtype not in DTYPES:
        _warn_once(f"dtype {x.dtype} is not supported; float32, bfloat16 and float64 are")
        return False
    if hidden > MAX_HIDDEN:
        _warn_once(f"hidden size {hidden} > {MAX_HIDDEN}: a program holds whole rows of the hidden state")
        return False
    return True


def _run(kind: str, fn, x, hidden: int, cell: tuple[str, str], args: tuple):
    """fn(*args), or None after one warning when the kernel does not build here (not retried for this key)."""
    key = f"{kind}:{''.join(cell)} H={hidden} {x.dtype}"
    if key in _FAILED:
        return None
    from triton.errors import TritonError

    try:
        return fn(*args)
    except TritonError as err:  # compilation, ptxas, out of registers or shared memory
        _FAILED.add(key)
        _warn_once(f"{key} does not build for this GPU: {type(err).__name__}: {str(err).strip().splitlines()[0]}")
        return None


def lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary: str, aux: str):
    """One ``lstm:XY`` layer on the Triton kernels (as ``lstm_reference_scan``), or None when they do not build."""
    from .triton_lstm import lstm_scan as scan

    return _run("lstm", scan, x, h0.shape[-1], (primary, aux), (x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux))


def gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """One ``gru:XY`` layer on the Triton kernels (as ``gru_reference_scan``), or None when they do not build."""
    from .triton_gru import gru_scan as scan

    return _run("gru", scan, x, h0.shape[-1], (primary, aux), (x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux))
