"""The compiled CPU loops of the gate-grid scans (scan.cpp), built on first use and cached.

``extension()`` compiles scan.cpp with torch's C++ extension tools the first time it is called
(about a minute; cached in torch's extension folder afterwards) and returns True when the ops are
usable. It returns False, and the Python scans are used, when ``URLSTM_NO_EXT=1`` is set or the
build fails (no compiler, no ninja): a warning says why, once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

from .gates import forget_bias_grad

_STATE: dict[str, bool] = {}
PRIMARY_CODE = {"-": 0, "C": 0, "U": 0, "O": 1}
AUX_CODE = {"-": 0, "M": 1, "R": 2, "I": 3}  # "I": untied input gate (torch.nn.LSTM's cell; LSTM only)


def extension() -> bool:
    if "ok" not in _STATE:
        _STATE["ok"] = _build()
    return _STATE["ok"]


def _build() -> bool:
    if os.environ.get("URLSTM_NO_EXT", "") not in ("", "0"):
        return False
    try:
        from torch.utils.cpp_extension import load

        try:  # the ninja wheel's binary, also when its virtual environment is not activated
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        source = Path(__file__).with_name("scan.cpp")
        build_dir = _build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / "urlstm_scan.so").exists():
            print("urlstm: compiling the CPU scan of the gated cores (once, under a minute)...", file=sys.stderr)
        flags = ["-O3"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])
        with _build_lock(build_dir):
            load(name="urlstm_scan", sources=[str(source)], extra_cflags=flags, build_directory=str(build_dir),
                 is_python_module=False, verbose=False)
        return hasattr(torch.ops.urlstm_scan, "lstm_fwd")
    except Exception as err:  # no compiler / ninja / headers: fall back to the Python scans
        warnings.warn(f"urlstm: compiled scan unavailable, using the Python scan ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''})", RuntimeWarning, stacklevel=2)
        return False


def _build_dir() -> Path:
    """One build folder per Python environment and source: two virtual environments sharing torch's
    extension cache would otherwise rebuild in turn, each loading the other's fresh library."""
    from torch.utils.cpp_extension import _get_build_directory

    source = Path(__file__).with_name("scan.cpp")
    key = hashlib.sha1(f"{sys.prefix}|{torch.__version__}|".encode() + source.read_bytes()).hexdigest()[:12]
    return Path(_get_build_directory("urlstm_scan", False)).with_name(f"urlstm_scan_{key}")


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold an flock (released by the kernel even if this process is killed) around torch's build.

    torch's own lock is a plain file that a process killed mid-build leaves behind, after which
    every later build waits for it forever; under our flock no other build runs, so such a file is
    stale and is removed.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock only
        yield
        return
    with open(build_dir / "urlstm.flock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        yield


def _keep2d(keep):
    return None if keep is None else keep.reshape(keep.shape[0], keep.shape[1]).contiguous()


class CppLSTMScan(torch.autograd.Function):
    """One layer of ``lstm:XY`` in C++, input projection included: (x, w_ih, bias, h0, c0, w_hh, b_f,
    keep, primary, aux) -> (y, h, c, g), as ``lstm_reference_scan`` given the same parameters."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux):
        keep = _keep2d(keep)
        codes = (PRIMARY_CODE[primary], AUX_CODE[aux])
        ys, hT, cT, G, S, C, Hp, Cp = torch.ops.urlstm_scan.lstm_fwd(x, w_ih, bias, h0, c0, w_hh, b_f, keep, *codes)
        ctx.save_for_backward(S, G, C, Hp, Cp, x, w_ih, w_hh, keep)
        ctx.codes, ctx.aux = codes, aux
        ctx.mark_non_differentiable(G)
        return ys, hT, cT, G

    @staticmethod
    def backward(ctx, dy, dhT, dcT, _dG):
        S, G, C, Hp, Cp, x, w_ih, w_hh, keep = ctx.saved_tensors
        dx, dw_ih, dbias, dh0, dc0, dw_hh = torch.ops.urlstm_scan.lstm_bwd(
            dy, dhT, dcT, S, G, C, Hp, Cp, x, w_ih, w_hh, keep, *ctx.codes, ctx.needs_input_grad[0])
        db_f = forget_bias_grad(dbias, G.shape[-1], ctx.aux, *((1, 0) if ctx.aux == "I" else (0, 1)))
        return (dx if ctx.needs_input_grad[0] else None), dw_ih, dbias, dh0, dc0, dw_hh, db_f, None, None, None


class CppGRUScan(torch.autograd.Function):
    """One layer of ``gru:XY`` in C++, input projection included: (x, w_ih, b_ih, h0, w_hh, b_hh, b_f,
    keep, primary, aux) -> (y, h, g), as ``gru_reference_scan`` given the same parameters."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux):
        keep = _keep2d(keep)
        codes = (PRIMARY_CODE[primary], AUX_CODE[aux])
        ys, hT, G, S, HN, Hp = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, *codes)
        ctx.save_for_backward(S, HN, G, Hp, x, w_ih, w_hh, keep)
        ctx.codes, ctx.aux = codes, aux
        ctx.mark_non_differentiable(G)
        return ys, hT, G

    @staticmethod
    def backward(ctx, dy, dhT, _dG):
        S, HN, G, Hp, x, w_ih, w_hh, keep = ctx.saved_tensors
        dx, dw_ih, db_ih, dh0, dw_hh, db_hh = torch.ops.urlstm_scan.gru_bwd(
            dy, dhT, S, HN, G, Hp, x, w_ih, w_hh, keep, *ctx.codes, ctx.needs_input_grad[0])
        db_f = forget_bias_grad(db_ih, G.shape[-1], ctx.aux, 1, 3)
        return (dx if ctx.needs_input_grad[0] else None), dw_ih, db_ih, dh0, dw_hh, db_hh, db_f, None, None, None


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def lstm_scan(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary: str, aux: str):
    """CppLSTMScan, or the op alone when no gradient is needed (acting): same outputs."""
    if _needs_graph(x, w_ih, bias, h0, c0, w_hh, b_f):
        return CppLSTMScan.apply(x, w_ih, bias, h0, c0, w_hh, b_f, keep, primary, aux)
    out = torch.ops.urlstm_scan.lstm_fwd(x, w_ih, bias, h0, c0, w_hh, b_f, _keep2d(keep),
                                         PRIMARY_CODE[primary], AUX_CODE[aux])
    return out[0], out[1], out[2], out[3]


def gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """CppGRUScan, or the op alone when no gradient is needed (acting): same outputs."""
    if _needs_graph(x, w_ih, b_ih, h0, w_hh, b_hh, b_f):
        return CppGRUScan.apply(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
    out = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, _keep2d(keep),
                                        PRIMARY_CODE[primary], AUX_CODE[aux])
    return out[0], out[1], out[2]
