"""What every run shares, ``train.py``'s learners and ``supervised`` alike: the run folder (a
TensorBoard writer held to fixed tag prefixes, JSON files written atomically, the git commit, the
folder's name) and the entry point's plumbing (flags parsed by tyro with one-line errors, the
device, the seeds).

A leaf module: it imports nothing from the project, so both ``agents`` and ``supervised`` (which
imports nothing else of the project but ``policies.cores``) may import it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, NoReturn

import torch

PREFIXES = ("charts/", "losses/", "perf/", "memory/")


class Writer:
    """SummaryWriter restricted to the prefixes charts/, losses/, perf/, memory/."""

    def __init__(self, run_dir: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.writer = SummaryWriter(run_dir, purge_step=purge_step, flush_secs=30)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """Log ``value`` unless it is None or NaN."""
        assert tag.startswith(PREFIXES), tag
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """Log the finite entries of ``values`` (nothing when there are none)."""
        assert tag.startswith(PREFIXES), tag
        values = values.detach().float().cpu()
        values = values[torch.isfinite(values)]
        if values.numel():
            self.writer.add_histogram(tag, values, step)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_json(os.path.join(self.run_dir, name), data)

    def close(self) -> None:
        self.writer.close()


def write_json(file: str, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    tmp = f"{file}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, file)


def read_json(file: str) -> dict | None:
    """The JSON object in ``file``, or None when it is missing or unreadable."""
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def git_commit() -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def safe_name(s: str) -> str:
    """``s`` usable in a folder name: each run of other characters becomes one "_" (lstm:-- -> lstm_--)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "x"


def make_run_dir(logdir: str, label: str, core: str, seed: int, run_name: str | None = None) -> str:
    """Create ``logdir/<label>__<core>__s<seed>__<YYYYmmdd-HHMMSS>`` (or ``logdir/run_name``); an
    existing folder is never reused (``-2``, ``-3``, ... appended)."""
    if run_name is None:
        run_name = f"{safe_name(label)}__{safe_name(core)}__s{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(logdir, run_name)
    base, n = run_dir, 1
    while os.path.exists(run_dir):
        n += 1
        run_dir = f"{base}-{n}"
    os.makedirs(run_dir)
    return run_dir


# ---------------------------------------------------------------------------------------------
# what every entry point shares: the command line (tyro), the device, the seeds
# ---------------------------------------------------------------------------------------------

class UsageError(Exception):
    """Bad input from the command line: printed as one line ``error: ...``, exit code 2."""


def one_line(err: BaseException | str) -> str:
    """An error message folded into one line."""
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def parse_args(cls: Any, argv: list[str], prog: str, *, description: str | None = None,
               default: Any = None, unknown: bool = False) -> Any:
    """``tyro.cli(cls)`` on ``argv`` whose parse errors become one-line ``UsageError`` s.

    tyro draws its errors as a framed panel; here the panel's message (the lines between its title
    and the first rule) is folded into one line. ``--help`` prints tyro's help and raises
    ``SystemExit(0)`` as usual. With ``unknown`` the flags tyro does not know are returned too:
    ``(value, unknown)``.
    """
    import contextlib
    import io

    import tyro

    kwargs: dict[str, Any] = {"args": list(argv), "prog": prog, "description": description,
                              "return_unknown_args": unknown}
    if default is not None:
        kwargs["default"] = default
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, **kwargs)
    except SystemExit as exit_:
        text = captured.getvalue()
        if exit_.code in (0, None):
            sys.stderr.write(text)
            raise
        raise UsageError(_panel_message(text) or f"cannot parse the flags of {prog}") from None


def _panel_message(text: str) -> str:
    """The message of a tyro error panel: its first block of lines after the title."""
    lines = [line.strip().strip("│╭╮╰╯").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    body: list[str] = []
    for line in lines[1:]:  # lines[0] holds the title ("Unrecognized options", "Value error", ...)
        if set(line) <= set("-─━ "):  # a rule
            if body:
                break
            continue
        body.append(line)
    message = " ".join(" ".join(body).split())
    return message[len("Error parsing "):] if message.startswith("Error parsing ") else message


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; UsageError for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def exit_code(run: Callable[[], int | None]) -> int:
    """``run()``'s exit code, whatever way it ends: returned, ``sys.exit`` (``--help``: 0),
    Ctrl-C (130), or an uncaught exception (its traceback, 1)."""
    try:
        code = run()
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001 - reported like the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    return 0 if code is None else int(code)


def cli(run: Callable[[], int | None]) -> NoReturn:
    """Run ``run`` and end the process with its exit code. The exit is fast: after every other
    exit handler has closed what it owns (this one is registered first, so it runs last), the
    standard streams are flushed and the process ends without tearing down the interpreter's
    objects, which takes about a second once torch is imported and frees nothing the operating
    system would not."""
    code = [1]
    atexit.register(_leave, code)
    code[0] = exit_code(run)
    sys.exit(code[0])


def _leave(code: list[int]) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code[0])
