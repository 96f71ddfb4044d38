"""Time per training step of each core on a task, measured round-robin in one process.

    python -m supervised speed --task copy --lag 480 [--reps 5] [--cores a,b,...] [task flags]

One step = fresh batch, forward, loss, backward, gradient clip, Adam step (what ``trainer.train``
does). The cores take turns (one step each, repeated ``reps`` times after two warm-up steps), so
machine noise hits them alike; the median is reported in milliseconds, with the ratio to ``lstm``.
"""

from __future__ import annotations

import statistics
import time

import torch

from .config import Config
from .model import SequenceModel
from .tasks import make_task


def _stepper(cfg: Config):
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)
    model = SequenceModel(cfg.core, task.input_size, cfg.hidden_size, task.output_size, task.readout,
                          cfg.num_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def step() -> float:
        start = time.perf_counter()
        x, target = task.train_batch()  # x [T, B, D]
        loss, _, _ = task.score(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        return time.perf_counter() - start
    return step


def measure(base: Config, cores: tuple[str, ...], reps: int) -> list[dict]:
    """Median ms per training step of every core at ``base``'s task and sizes (CPU, base.threads)."""
    if base.threads:
        torch.set_num_threads(base.threads)
    steppers = {c: _stepper(base.replace(core=c)) for c in cores}
    for step in steppers.values():  # warm-up, and the compiled scan's first-use build
        step(), step()
    times: dict[str, list[float]] = {c: [] for c in cores}
    for _ in range(reps):
        for c, step in steppers.items():
            times[c].append(step())
    ref = statistics.median(times["lstm"]) if "lstm" in times else None
    return [{"core": c, "ms_per_step": round(1e3 * statistics.median(t), 2),
             "vs_lstm": round(statistics.median(t) / ref, 2) if ref else None} for c, t in times.items()]


def markdown(base: Config, rows: list[dict], reps: int) -> str:
    lines = [f"{base.task_label}: T={base.seq_len}, batch {base.batch_size}, hidden {base.hidden_size}, "
             f"{base.threads or torch.get_num_threads()} thread(s), median of {reps} round-robin steps", "",
             "| core | ms/step | vs lstm |", "|---|---|---|"]
    lines += [f"| `{r['core']}` | {r['ms_per_step']:.1f} | {r['vs_lstm'] if r['vs_lstm'] is not None else '-'} |"
              for r in rows]
    return "\n".join(lines)
