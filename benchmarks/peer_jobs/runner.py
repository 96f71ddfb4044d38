"""The side of ``benchmarks/peers.py`` that touches processes: peer environments and timed jobs.

Runs in the benchmark's own process (the project's Python), unlike the job scripts beside it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".peers"  # outside the folders that the tests walk
_TASK_PACKAGES = ["minigrid==3.2.0", "popgym==1.0.7"]


def _torch_pin() -> str:
    import torch

    return "torch==" + torch.__version__.split("+")[0]  # the project's CPU torch (a local wheel here)


# peer -> its environment: pip steps (extra environment variables, pip arguments) and an import
# check; peers absent here run with the project's Python
VENVS: dict[str, dict] = {
    "pufferlib": {
        "steps": [
            ({}, [_torch_pin(), "numpy", "gymnasium", "psutil", "nvidia-ml-py", "rich",
                  "rich-argparse", "pyro-ppl", "setuptools", "wheel", *_TASK_PACKAGES]),
            # the wheel links CUDA and pins torch 2.9.0; its sdist builds a CPU-only _C against
            # the torch installed above when told to
            ({"PUFFERLIB_DISABLE_CUDA": "1"},
             ["--no-deps", "--no-build-isolation", "--no-binary", "pufferlib-core",
              "pufferlib-core==3.0.23"]),
        ],
        "check": "import pufferlib.pufferl as p; assert p._C_AVAILABLE, 'pufferlib._C did not load'",
    },
    "sample-factory": {
        "steps": [({}, [_torch_pin(), "sample-factory==2.1.1", *_TASK_PACKAGES])],
        "check": "import sample_factory.train, minigrid, popgym",
    },
}


def venv_python(peer: str) -> Path:
    return PEERS_DIR / peer / "bin" / "python"


def disk_mb(path: Path) -> float:
    """Disk space of a folder (allocated blocks), MB."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return round(total / 2**20, 1)


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-600:]


def ensure_venv(peer: str) -> dict:
    """Create ``.peers/<peer>`` (ignored by git) unless it is ready for the current spec.

    Returns:
        ``{"venv", "disk_mb", "torch", "setup_s"}`` or ``{"venv", "error"}`` (the failing command
        and the last lines it printed).
    """
    folder = PEERS_DIR / peer
    spec = json.dumps(VENVS[peer], sort_keys=True)
    marker = folder / ".ready"
    out = {"venv": str(folder.relative_to(ROOT))}
    if marker.exists() and marker.read_text() == spec:
        return {**out, "disk_mb": disk_mb(folder), "torch": _torch_of(peer)}
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"setting up {out['venv']} (once; a few minutes)", file=sys.stderr, flush=True)
    commands = [({}, [sys.executable, "-m", "venv", str(folder)])]
    commands += [(env, [str(venv_python(peer)), "-m", "pip", "install", "-q", *pip])
                 for env, pip in VENVS[peer]["steps"]]
    commands.append(({}, [str(venv_python(peer)), "-c", VENVS[peer]["check"]]))
    for env, cmd in commands:
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                              check=False)
        if done.returncode:
            shown = " ".join([*(f"{k}={v}" for k, v in env.items()), *cmd])
            return {**out, "error": f"{shown} exited {done.returncode}: {_tail(done.stderr)}"}
    marker.write_text(spec)
    return {**out, "disk_mb": disk_mb(folder), "torch": _torch_of(peer),
            "setup_s": round(time.perf_counter() - t0, 1)}


def _torch_of(peer: str) -> str:
    done = subprocess.run([str(venv_python(peer)), "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or f"unknown ({_tail(done.stderr, 1)})"


def prepare(cmd: list[str]) -> None:
    """Run an untimed warm-up command (a compile, the first imports); its failure shows later."""
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=False)


def become_subreaper() -> bool:
    """Make orphaned descendants of our jobs our children, so their CPU time reaches us (Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _busy_s() -> float:
    """CPU seconds that every process of the machine has used so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _reap(group: int, grace: float) -> int:
    """Wait for orphans our job left (we are their subreaper); kill the job's group after ``grace``."""
    reaped, deadline, killed = 0, time.monotonic() + grace, False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
        elif time.monotonic() < deadline:
            time.sleep(0.05)
        elif killed:  # left the group (setsid) and outlived the kill: give up on it
            return reaped
        else:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed, deadline = True, time.monotonic() + 5.0


def timed_run(cmd: list[str], extra_env: dict[str, str], timeout: float, workdir: str) -> dict:
    """Run ``cmd`` in a new session; wall seconds to its exit, CPU seconds of it and its descendants.

    Returns:
        ``{"rc", "wall_s", "cpu_s", "others_cpu_s", "orphans", "load_1m"}`` and, when it failed,
        ``stderr_tail``; ``others_cpu_s`` is what the rest of the machine used meanwhile.
    """
    log = Path(workdir) / "job.log"
    before, busy0, load = resource.getrusage(resource.RUSAGE_CHILDREN), _busy_s(), os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **extra_env}, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    wall = time.perf_counter() - t0
    orphans = _reap(proc.pid, grace=30.0)
    after, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), _busy_s()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"rc": rc, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
           "others_cpu_s": round(max(0.0, busy1 - busy0 - cpu), 1), "orphans": orphans,
           "load_1m": round(load, 2)}
    if rc:
        text = log.read_text(errors="replace")
        out["stderr_tail"] = "timed out" if wall >= timeout else _tail(text)
    return out
