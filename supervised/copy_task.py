"""The copy task: remember 10 tokens over a long lag and write them out when cued.

Input symbols (one-hot, 10 wide): tokens 0-7, blank 8, cue 9. A sequence of length ``lag + 20`` is
10 random tokens, ``lag - 1`` blanks, the cue, then 10 blanks during which the model must output the
10 tokens in order (Arjovsky et al. 2016's layout; lag 480 gives the paper's sequence of 500). The loss
is the cross-entropy on those last 10 outputs only, so a memoryless model sits at log(8) = 2.079.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_TOKENS = 8
NUM_COPY = 10
BLANK, CUE = NUM_TOKENS, NUM_TOKENS + 1
EVAL_SEED_OFFSET = 1_000_003  # the evaluation set's generator is seeded apart from the training one


def copy_batch(batch_size: int, lag: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One batch of copy sequences.

    Args:
        batch_size: B.
        lag: blanks between the last token and the first output step (>= 1); T = lag + 20.
        generator: source of the tokens (the batch is a function of its state only).
    Returns:
        symbols [T, B] long (0-7 tokens, 8 blank, 9 cue) and targets [10, B] long (the tokens).
    """
    tokens = torch.randint(0, NUM_TOKENS, (NUM_COPY, batch_size), generator=generator)  # [10, B]
    symbols = torch.full((lag + 2 * NUM_COPY, batch_size), BLANK, dtype=torch.long)  # [T, B]
    symbols[:NUM_COPY] = tokens
    symbols[NUM_COPY + lag - 1] = CUE
    return symbols, tokens


class CopyTask:
    """Fresh training batches from the run's seed; a fixed held-out evaluation set from seed + offset."""

    input_size = NUM_TOKENS + 2
    output_size = NUM_TOKENS
    readout = NUM_COPY  # the model's last 10 outputs are scored
    baseline_loss = math.log(NUM_TOKENS)  # memoryless: uniform over the 8 tokens
    metric = "accuracy"  # per token

    def __init__(self, batch_size: int, lag: int, seed: int, eval_size: int):
        self.batch_size, self.lag = batch_size, lag
        self.generator = torch.Generator().manual_seed(seed)
        self.eval_set = copy_batch(eval_size, lag, torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))

    @staticmethod
    def encode(symbols: Tensor) -> Tensor:
        """[T, B] long -> one-hot inputs [T, B, 10] float."""
        return F.one_hot(symbols, NUM_TOKENS + 2).float()

    def train_batch(self) -> tuple[Tensor, Tensor]:
        """x [T, B, 10], targets [10, B]."""
        symbols, tokens = copy_batch(self.batch_size, self.lag, self.generator)
        return self.encode(symbols), tokens

    def eval_batches(self, chunk: int = 250) -> Iterator[tuple[Tensor, Tensor]]:
        symbols, tokens = self.eval_set
        for i in range(0, symbols.shape[1], chunk):
            yield self.encode(symbols[:, i:i + chunk]), tokens[:, i:i + chunk]

    @staticmethod
    def score(out: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        """out [10, B, 8] logits, target [10, B] -> (mean cross-entropy, correct tokens, tokens)."""
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        correct = (out.argmax(-1) == target).sum()
        return loss, correct, target.numel()
