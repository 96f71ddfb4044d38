"""Sequential pixels: classify an image fed one pixel per step (plain or in a fixed permuted order).

Pixels are scaled to [0, 1] by the data set's maximum value, then standardised with the training
split's per-channel mean and std. The class is read from the model's last output.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import ImageData


def pixel_permutation(num_pixels: int, seed: int) -> Tensor:
    """The fixed pixel order of the permuted task: a permutation of range(num_pixels) from ``seed``."""
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed))


class PixelsTask:
    """Minibatches of training images in seeded random epochs; evaluation on the test split."""

    readout = 1
    metric = "accuracy"

    def __init__(self, data: ImageData, batch_size: int, seed: int, eval_size: int, permute: bool = False,
                 permute_seed: int = 0):
        train_x = torch.from_numpy(np.asarray(data.train_x, dtype=np.float32)) / data.max_value  # [N, T, C]
        test_x = torch.from_numpy(np.asarray(data.test_x, dtype=np.float32)) / data.max_value  # [M, T, C]
        mean = train_x.mean(dim=(0, 1))
        std = train_x.std(dim=(0, 1)).clamp_min(1e-6)
        self.train_x, self.test_x = (train_x - mean) / std, (test_x - mean) / std
        self.train_y = torch.from_numpy(np.asarray(data.train_y, dtype=np.int64))
        self.test_y = torch.from_numpy(np.asarray(data.test_y, dtype=np.int64))
        self.order = pixel_permutation(self.train_x.shape[1], permute_seed) if permute else None
        if self.order is not None:
            self.train_x, self.test_x = self.train_x[:, self.order], self.test_x[:, self.order]
        self.input_size = self.train_x.shape[2]
        self.output_size = data.num_classes
        self.baseline_loss = math.log(data.num_classes)  # uniform guess
        self.batch_size, self.eval_size = batch_size, min(eval_size, len(self.test_y))
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch: list[Tensor] = []

    def train_batch(self) -> tuple[Tensor, Tensor]:
        """x [T, B, C] (time-major), labels [B]; epochs are reshuffled, a batch never straddles two."""
        if not self._epoch:
            perm = torch.randperm(len(self.train_y), generator=self.generator)
            self._epoch = list(perm.split(self.batch_size))[::-1]
        idx = self._epoch.pop()
        return self.train_x[idx].transpose(0, 1), self.train_y[idx]

    def eval_batches(self, chunk: int = 500) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, self.eval_size, chunk):
            j = min(i + chunk, self.eval_size)
            yield self.test_x[i:j].transpose(0, 1), self.test_y[i:j]

    @staticmethod
    def score(out: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        """out [1, B, classes] logits, target [B] -> (cross-entropy, correct, count)."""
        logits = out[-1]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).sum(), target.numel()
