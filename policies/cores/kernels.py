"""The compiled CPU loops of the gate-grid scans (scan.cpp), built on first use and cached.

``extension()`` returns True when the ops are usable. The first call on a machine compiles scan.cpp
with torch's C++ extension tools (``-march=native``; about a minute) in a child process, which also
runs the ops once on small inputs against the float64 loop; only a library that passed this
self-check is loaded, so a library that dies on this CPU (an illegal instruction) or computes wrong
values costs a warning, never a crash. The library is cached under torch's extension folder
(``TORCH_EXTENSIONS_DIR``, by default ~/.cache/torch_extensions) in a folder whose name is a hash of
the source, the compiler flags, torch, the Python environment and the CPU (model and instruction-set
flags): a home folder shared between machines never loads a library built for another CPU.

``URLSTM_NO_EXT=1`` (or a failed build or self-check) selects the Python scans; a warning says why,
once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from .gates import forget_bias_grad

_STATE: dict[str, bool] = {}
PRIMARY_CODE = {"-": 0, "C": 0, "U": 0, "O": 1}
AUX_CODE = {"-": 0, "M": 1, "R": 2, "I": 3}  # "I": untied input gate (torch.nn.LSTM's cell; LSTM only)
SOURCE = Path(__file__).with_name("scan.cpp")
LIBRARY = "urlstm_scan.so"
PASSED = "selfcheck.ok"  # written into the build folder once the child process's self-check passed


def extension() -> bool:
    if "ok" not in _STATE:
        _STATE["ok"] = _load()
    return _STATE["ok"]


def runs(x: torch.Tensor) -> bool:
    """The compiled loop takes ``x``: a CPU tensor of float32 or float64, and the library built here."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and extension()


def _flags() -> list[str]:
    # -fno-trapping-math / -fno-math-errno (as torch itself is built): without them GCC leaves the
    # gate loops scalar (the clamp in exp_approx is a compare that may trap).
    flags = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        flags.append("-march=native")
    elif machine in ("aarch64", "arm64"):
        flags.append("-mcpu=native")
    return flags


def cpu_identity() -> str:
    """The CPU's model and instruction-set flags, as the OS reports them (one line)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:  # the first processor's block
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    keys = ("vendor_id", "cpu family", "model", "model name", "cpu implementer", "cpu architecture",
            "cpu variant", "cpu part")
    model = " ".join(fields[k] for k in keys if k in fields) or platform.processor()
    flags = " ".join(sorted((fields.get("flags") or fields.get("features") or "").split()))
    if not flags and sys.platform == "darwin":
        with contextlib.suppress(Exception):
            flags = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "hw.optional"],
                                   capture_output=True, text=True, timeout=5).stdout.replace("\n", " ")
    return f"{platform.machine()} | {model} | {flags}"


ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_ne_convert", "avx512f", "avx512bw",
             "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve", "sve2", "bf16",
             "i8mm")


def cpu_info() -> dict:
    """The CPU for benchmark reports: model, the vector instruction sets that matter here, cores."""
    machine, model, flags = cpu_identity().split(" | ", 2)
    return {"model": model, "arch": machine, "isa": [f for f in ISA_FLAGS if f in flags.split()],
            "logical_cpus": os.cpu_count()}


def build_dir() -> Path:
    """The cache folder of the library for this source, these flags, this torch, Python and CPU."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch_extensions")
    key = "|".join([sys.prefix, sys.version, torch.__version__, " ".join(_flags()), cpu_identity()])
    digest = hashlib.sha1(key.encode() + SOURCE.read_bytes()).hexdigest()[:16]
    return Path(root) / f"urlstm_scan_{digest}"


def _load() -> bool:
    if os.environ.get("URLSTM_NO_EXT", "") not in ("", "0"):
        return False
    try:
        folder = build_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with _build_lock(folder):
            (folder / "lock").unlink(missing_ok=True)  # torch's own build lock, left by a killed build
            if not (folder / PASSED).exists():
                reason = _build_in_child(folder)
                if reason:
                    return _fallback(reason)
        torch.ops.load_library(str(folder / LIBRARY))
        return hasattr(torch.ops.urlstm_scan, "lstm_fwd")
    except Exception as err:  # unwritable cache, a library that does not load: the Python scans
        return _fallback(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def _fallback(reason: str) -> bool:
    warnings.warn(f"urlstm: compiled scan unavailable, using the Python scan ({reason})", RuntimeWarning,
                  stacklevel=3)
    return False


def _build_in_child(folder: Path) -> str:
    """Compile and self-check in a child process; '' when it passed, else why not (one line)."""
    (folder / PASSED).unlink(missing_ok=True)
    print("urlstm: compiling the CPU scan of the gated cores (once per machine, about a minute)...",
          file=sys.stderr)
    code = ("import sys; from pathlib import Path; from policies.cores import kernels; "
            "kernels._build_and_check(Path(sys.argv[1]))")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                             timeout=1800)
    except subprocess.TimeoutExpired:
        return "the build took more than 30 minutes"
    if out.returncode == 0 and (folder / PASSED).exists():
        return ""
    if out.returncode < 0:
        import signal

        name = signal.Signals(-out.returncode).name
        return f"its self-check died with {name}: the library does not run on this CPU"
    lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"the build exited with code {out.returncode}"


def _build_and_check(folder: Path) -> None:
    """In the child: build the library into ``folder``, run every op on small inputs, mark it passed."""
    from torch.utils.cpp_extension import load

    try:  # the ninja wheel's binary, also when its virtual environment is not activated
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    load(name="urlstm_scan", sources=[str(SOURCE)], extra_cflags=_flags(), build_directory=str(folder),
         is_python_module=False, verbose=False)
    _STATE["ok"] = True
    from .selfcheck import check_all

    check_all()
    (folder / PASSED).write_text(cpu_identity() + "\n")


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold an flock (released by the kernel even if this process is killed) around the build, so
    that two processes never build the same folder at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock only
        yield
        return
    with open(build_dir / "urlstm.flock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
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
        ys, hT, cT, G, S, C, Hp, Cp = torch.ops.urlstm_scan.lstm_fwd(x, w_ih, bias, h0, c0, w_hh, b_f, keep,
                                                                     *codes, True)
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
        ys, hT, G, S, HN, Hp = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, *codes,
                                                             True)
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
                                         PRIMARY_CODE[primary], AUX_CODE[aux], False)
    return out[0], out[1], out[2], out[3]


def gru_scan(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary: str, aux: str):
    """CppGRUScan, or the op alone when no gradient is needed (acting): same outputs."""
    if _needs_graph(x, w_ih, b_ih, h0, w_hh, b_hh, b_f):
        return CppGRUScan.apply(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, keep, primary, aux)
    out = torch.ops.urlstm_scan.gru_fwd(x, w_ih, b_ih, h0, w_hh, b_hh, b_f, _keep2d(keep),
                                        PRIMARY_CODE[primary], AUX_CODE[aux], False)
    return out[0], out[1], out[2]
