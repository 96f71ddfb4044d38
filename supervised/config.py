"""The run configuration of ``python -m supervised``: one frozen dataclass, task defaults filled in.

tyro builds the flags from the fields (``supervised/__main__.py``); the string under each field
is its help text. Fields left at None take the task's default (``TASK_DEFAULTS``) in ``__post_init__``,
so ``config.json`` always records the values that were used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from tyro.conf import Suppress, arg

TASKS = ("copy", "adding", "pixels")
DATASETS = ("digits", "mnist", "cifar10")

# steps, batch_size, hidden_size, eval_every, eval_size per task (copy: the paper's setting as publicly
# reimplemented: lag 480 (sequence 500), hidden 256, batch 10, Adam 1e-3, gradient-norm clip 1)
TASK_DEFAULTS: dict[str, dict[str, int]] = {
    "copy": dict(steps=20000, batch_size=10, hidden_size=256, eval_every=500, eval_size=500),
    "adding": dict(steps=10000, batch_size=50, hidden_size=128, eval_every=500, eval_size=500),
    "pixels": dict(steps=5000, batch_size=32, hidden_size=128, eval_every=250, eval_size=10000),
}


class ConfigError(Exception):
    """An invalid value or combination: the message says what to change (printed as one line, exit 2)."""


@dataclass(frozen=True)
class Config:
    task: Annotated[str, Suppress] = "copy"
    """copy, adding or pixels (the command: python -m supervised TASK)"""
    core: str = "urlstm"
    """memory core spec from policies.cores (lstm, gru, urlstm, urgru, mlp, lstm:XY, gru:XY)"""
    steps: Annotated[int | None, arg(help_behavior_hint='(default: per task)')] = None
    """optimizer steps (default per task: copy 20000, adding 10000, pixels 5000)"""
    batch_size: Annotated[int | None, arg(help_behavior_hint='(default: per task)')] = None
    """sequences per step (default per task: copy 10, adding 50, pixels 32)"""
    hidden_size: Annotated[int | None, arg(help_behavior_hint='(default: per task)')] = None
    """hidden units of the core (default per task: copy 256, adding 128, pixels 128)"""
    num_layers: int = 1
    """stacked core layers"""
    lr: float = 1e-3
    """Adam learning rate"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (0 disables clipping)"""
    seed: int = 1
    """seed of weights, training batches and evaluation set"""
    device: str = "cpu"
    """cpu, cuda or auto"""
    threads: int = 1
    """torch intra-op threads (0 keeps torch's default)"""
    time_budget: float | None = None
    """stop training after this many seconds of wall-clock time (the steps reached are recorded)"""
    eval_every: Annotated[int | None, arg(help_behavior_hint='(default: per task)')] = None
    """evaluate every this many steps, and at the end (default per task: copy/adding 500, pixels 250)"""
    eval_size: Annotated[int | None, arg(help_behavior_hint='(default: per task)')] = None
    """evaluation sequences (copy/adding: fresh held-out batches; pixels: the first N of the test split)"""
    log_every: int = 20
    """log training loss, accuracy and gate statistics every this many steps"""
    logdir: str = "runs/supervised"
    """parent folder of the run folder"""
    run_name: str | None = None
    """run folder name (default: <task>__<core>__s<seed>__<timestamp>)"""
    progress: bool = True
    """show a progress bar"""
    lag: int = 480
    """copy: blank steps between the 10 tokens and the recall (sequence length lag + 20)"""
    length: int = 1000
    """adding: sequence length (the paper used 2000)"""
    dataset: str = "digits"
    """pixels: digits (scikit-learn's bundled 8x8, offline), mnist (IDX files) or cifar10 (python pickles)"""
    permute: bool = False
    """pixels: feed the pixels in a fixed random order (drawn from --permute-seed)"""
    permute_seed: int = 0
    """pixels: seed of the fixed permutation (shared by all runs, so seeds vary only the training)"""
    data_dir: str = "data"
    """pixels: folder holding the MNIST IDX files or cifar-10-batches-py/"""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS)}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        positive = ("steps", "batch_size", "hidden_size", "num_layers", "eval_every", "eval_size", "log_every",
                    "lag", "length")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"--max-grad-norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 keeps torch's default), got {self.threads}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {self.time_budget}")
        if self.length < 2:
            raise ConfigError(f"--length must be >= 2 (one marker in each half), got {self.length}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        from policies.cores import check_core
        try:
            check_core(self.core)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def seq_len(self) -> int:
        """Time steps of one input sequence."""
        if self.task == "copy":
            return self.lag + 20
        if self.task == "adding":
            return self.length
        return {"digits": 64, "mnist": 784, "cifar10": 1024}[self.dataset]

    @property
    def task_label(self) -> str:
        """Short name used in run folders and tables, e.g. copy-lag480, pixels-digits-perm."""
        if self.task == "copy":
            return f"copy-lag{self.lag}"
        if self.task == "adding":
            return f"adding-T{self.length}"
        return f"pixels-{self.dataset}" + ("-perm" if self.permute else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)
