"""Build the task object of a config.

A task has ``input_size``, ``output_size``, ``readout`` (how many of the model's last outputs are
scored), ``baseline_loss`` (a memoryless model's loss), ``train_batch() -> (x [T, B, D], target)``,
``eval_batches()`` (the same pairs over its held-out set) and ``score(out [readout, B, O], target) ->
(loss, correct, count)``.
"""

from __future__ import annotations

from .adding import AddingTask
from .config import Config
from .copy_task import CopyTask
from .datasets import load
from .pixels import PixelsTask


def make_task(cfg: Config) -> CopyTask | AddingTask | PixelsTask:
    """Raises datasets.MissingData / BadData when the pixel data cannot be read."""
    if cfg.task == "copy":
        return CopyTask(cfg.batch_size, cfg.lag, cfg.seed, cfg.eval_size)
    if cfg.task == "adding":
        return AddingTask(cfg.batch_size, cfg.length, cfg.seed, cfg.eval_size)
    return PixelsTask(load(cfg.dataset, cfg.data_dir), cfg.batch_size, cfg.seed, cfg.eval_size, cfg.permute,
                      cfg.permute_seed)
