"""The compiled CPU loops of the gate-grid scans (scan.cpp): built on first use, checked, cached, loaded.

``extension()`` returns True when the ops are usable. The first call on a machine compiles scan.cpp
with torch's C++ extension tools (``-march=native``; well under a minute) in a child process, which
also runs the ops once on small inputs against the float64 loop (selfcheck.py); only a library that
passed this self-check is loaded, so a library that dies on this CPU (an illegal instruction) or
computes wrong values costs a warning, never a crash. The library is cached under torch's extension
folder (``TORCH_EXTENSIONS_DIR``, by default ~/.cache/torch_extensions) in a folder whose name is a
hash of the source, the compiler flags, torch, the Python environment and the CPU (model and
instruction-set flags): a home folder shared between machines never loads a library built for
another CPU.

``URLSTM_NO_EXT=1`` (or a failed build or self-check) selects the Python scans; a warning says why,
once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from . import cpu

_STATE: dict[str, bool] = {}
SOURCE = Path(__file__).with_name("scan.cpp")
LIBRARY = "urlstm_scan.so"
PASSED = "selfcheck.ok"  # written into the build folder once the child process's self-check passed
# The child process: build, self-check (selfcheck.py), mark passed. Run as code, not imported here.
_CHILD = ("import sys; from pathlib import Path; from policies.cores import selfcheck; "
          "selfcheck.build_and_check(Path(sys.argv[1]))")


def extension() -> bool:
    """Whether the compiled ops are loaded in this process (built, checked and loaded on first call)."""
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


def build_dir() -> Path:
    """The cache folder of the library for this source, these flags, this torch, Python and CPU."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch_extensions")
    key = "|".join([sys.prefix, sys.version, torch.__version__, " ".join(_flags()), cpu.cpu_identity()])
    digest = hashlib.sha1(key.encode() + SOURCE.read_bytes()).hexdigest()[:16]
    return Path(root) / f"urlstm_scan_{digest}"


def compile_into(folder: Path) -> None:
    """Build the library into ``folder`` and load it into this process (the child's first step)."""
    from torch.utils.cpp_extension import load

    try:  # the ninja wheel's binary, also when its virtual environment is not activated
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    load(name="urlstm_scan", sources=[str(SOURCE)], extra_cflags=_flags(), build_directory=str(folder),
         is_python_module=False, verbose=False)


def mark_passed(folder: Path) -> None:
    """Record that the library in ``folder`` passed its self-check on this CPU."""
    (folder / PASSED).write_text(cpu.cpu_identity() + "\n")


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
    except Exception as err:  # noqa: BLE001 (unwritable cache, a library that does not load: the Python scans)
        return _fallback(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def _fallback(reason: str) -> bool:
    warnings.warn(f"urlstm: compiled scan unavailable, using the Python scan ({reason})", RuntimeWarning,
                  stacklevel=3)
    return False


def _build_in_child(folder: Path) -> str:
    """Compile and self-check in a child process; '' when it passed, else why not (one line)."""
    (folder / PASSED).unlink(missing_ok=True)
    print("urlstm: compiling the CPU scan of the gated cores (once per machine, well under a minute)...",
          file=sys.stderr)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], check=False, capture_output=True,
                             text=True, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        return "the build took more than 30 minutes"
    if out.returncode == 0 and (folder / PASSED).exists():
        return ""
    if out.returncode < 0:
        name = signal.Signals(-out.returncode).name
        return f"its self-check died with {name}: the library does not run on this CPU"
    lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"the build exited with code {out.returncode}"


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
