"""The adding problem: two marked numbers among T, regress their sum.

Input [T, B, 2]: channel 0 a value U[0, 1] at every step, channel 1 a marker that is 1 at exactly
two steps, one in each half of the sequence (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).
The target is the sum of the two marked values; the loss is the MSE of the model's last output.
Always predicting 1 gives MSE Var(U1 + U2) = 1/6 = 0.167, the memoryless baseline. "Accuracy" is the
fraction of sequences whose absolute error is below 0.04 (Hochreiter & Schmidhuber's criterion).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

TOLERANCE = 0.04
EVAL_SEED_OFFSET = 1_000_003


def adding_batch(batch_size: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One batch of adding sequences.

    Args:
        batch_size: B.
        length: T (>= 2); the first marker lies in [0, T//2), the second in [T//2, T).
        generator: source of values and marker positions.
    Returns:
        x [T, B, 2] float (value, marker) and targets [B] float (sum of the marked values).
    """
    values = torch.rand(length, batch_size, generator=generator)  # [T, B]
    half = length // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)  # [B]
    second = torch.randint(half, length, (batch_size,), generator=generator)  # [B]
    marker = torch.zeros(length, batch_size)  # [T, B]
    cols = torch.arange(batch_size)
    marker[first, cols] = 1.0
    marker[second, cols] = 1.0
    target = values[first, cols] + values[second, cols]  # [B]
    return torch.stack([values, marker], dim=-1), target


class AddingTask:
    """Fresh training batches from the run's seed; a fixed held-out evaluation set from seed + offset."""

    input_size = 2
    output_size = 1
    readout = 1
    baseline_loss = 1.0 / 6.0
    metric = "accuracy"  # |error| < 0.04

    def __init__(self, batch_size: int, length: int, seed: int, eval_size: int):
        self.batch_size, self.length = batch_size, length
        self.generator = torch.Generator().manual_seed(seed)
        self.eval_set = adding_batch(eval_size, length, torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))

    def train_batch(self) -> tuple[Tensor, Tensor]:
        """x [T, B, 2], targets [B]."""
        return adding_batch(self.batch_size, self.length, self.generator)

    def eval_batches(self, chunk: int = 250) -> Iterator[tuple[Tensor, Tensor]]:
        x, target = self.eval_set
        for i in range(0, x.shape[1], chunk):
            yield x[:, i:i + chunk], target[i:i + chunk]

    @staticmethod
    def score(out: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        """out [1, B, 1], target [B] -> (MSE, sequences within tolerance, sequences)."""
        pred = out[-1, :, 0]  # [B]
        loss = F.mse_loss(pred, target)
        correct = ((pred - target).abs() < TOLERANCE).sum()
        return loss, correct, target.numel()
