"""Train one core on one task: ``train(cfg) -> summary``; logs to a run folder (see runlog.py).

Loop: fresh batch -> forward -> task loss -> backward -> clip -> Adam step. Every ``log_every`` steps
the mean training loss and accuracy since the last log and the forget-gate statistics of the last
forward are logged; every ``eval_every`` steps, and once at the end, the held-out set is evaluated.
``time_budget`` stops training when the wall-clock time since the first step runs out.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch
from tqdm import tqdm

from agents.runfolder import resolve_device, seed_everything

from .config import Config
from .model import SequenceModel
from .runlog import RunLog, git_commit, make_run_dir, write_json
from .tasks import make_task


@torch.no_grad()
def evaluate(model: SequenceModel, task, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over the task's held-out set."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, target in task.eval_batches():
        loss, right, n = task.score(model(x.to(device)), target.to(device))
        total_loss += loss.item() * n
        correct += int(right)
        count += n
    model.train()
    return total_loss / count, correct / count


def train(cfg: Config, stop: Callable[[], bool] | None = None) -> dict:
    """Train ``cfg.core`` on ``cfg.task``; returns the summary (also written to summary.json).

    Raises:
        UsageError for a missing CUDA device, ConfigError for core options; datasets.MissingData / BadData for pixel data
        that is absent or unreadable (before the run folder is created).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    task = make_task(cfg)
    model = SequenceModel(cfg.core, task.input_size, cfg.hidden_size, task.output_size, task.readout,
                          cfg.num_layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    run_dir = make_run_dir(cfg.logdir, cfg.task_label, cfg.core, cfg.seed, cfg.run_name)
    params = sum(p.numel() for p in model.parameters())
    write_json(f"{run_dir}/config.json", {
        **cfg.to_dict(), "seq_len": cfg.seq_len, "task_label": cfg.task_label, "git_commit": git_commit(),
        "device_resolved": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "params": params, "baseline_loss": task.baseline_loss, "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    log = RunLog(run_dir)
    if cfg.progress:
        print(f"{cfg.core} on {cfg.task_label} (T={cfg.seq_len}, {params:,} parameters) on {device}; "
              f"run folder {run_dir}", file=sys.stderr)

    status, step, eval_time = "done", 0, 0.0
    sum_loss = torch.zeros((), device=device)
    sum_correct = torch.zeros((), device=device, dtype=torch.long)
    count = batches = 0
    evals: list[tuple[int, float, float]] = []  # (step, loss, accuracy)
    last_train: tuple[float, float] = (math.nan, math.nan)
    bar = tqdm(total=cfg.steps, disable=not cfg.progress, dynamic_ncols=True, leave=False, file=sys.stderr)
    start = time.perf_counter()
    try:
        while step < cfg.steps:
            if cfg.time_budget is not None and time.perf_counter() - start >= cfg.time_budget:
                status = "time budget"
                break
            if stop is not None and stop():
                status = "stopped"
                break
            x, target = task.train_batch()  # x [T, B, D]
            loss, correct, n = task.score(model(x.to(device)), target.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
            sum_loss += loss.detach()
            sum_correct += correct
            count, batches = count + n, batches + 1
            bar.update(1)
            row: dict = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_train = (sum_loss.item() / batches, sum_correct.item() / count)
                sum_loss.zero_(), sum_correct.zero_()
                count = batches = 0
                if not math.isfinite(last_train[0]):
                    status = f"diverged: training loss {last_train[0]} at step {step}"
                    break
                row.update(train_loss=round(last_train[0], 6), train_accuracy=round(last_train[1], 6))
                log.scalar("losses/train_loss", last_train[0], step)
                log.scalar("charts/train_accuracy", last_train[1], step)
                log.scalar("perf/steps_per_s", step / max(1e-9, time.perf_counter() - start - eval_time), step)
                gates = model.core.gate_stats()
                if gates is not None:
                    row["gate_mean"] = round(gates["gate"].mean().item(), 6)
                    log.scalar("memory/gate_mean", row["gate_mean"], step)
                    log.scalar("memory/timescale_median", gates["timescale"].median().item(), step)
                bar.set_postfix(loss=f"{last_train[0]:.4f}", acc=f"{last_train[1]:.3f}", refresh=False)
            if step % cfg.eval_every == 0:
                eval_time += _eval_and_log(model, task, device, log, step, evals, row)
            if row:
                log.curve(step=step, time_s=round(time.perf_counter() - start, 3), **row)
    except KeyboardInterrupt:
        status = "interrupted"
    train_end = time.perf_counter()
    bar.close()
    if step and not status.startswith("diverged") and (not evals or evals[-1][0] != step):
        row = {}
        _eval_and_log(model, task, device, log, step, evals, row)
        log.curve(step=step, time_s=round(train_end - start, 3), **row)
    train_time = train_end - start  # the training loop, periodic evaluations included
    pure = max(1e-9, train_time - eval_time)  # optimizer steps only: what steps_per_s measures
    summary = {
        "task": cfg.task, "task_label": cfg.task_label, "core": cfg.core, "seed": cfg.seed, "status": status,
        "steps": step, "steps_requested": cfg.steps, "time_budget_s": cfg.time_budget,
        "wall_time_s": round(time.perf_counter() - start, 2), "train_time_s": round(train_time, 2),
        "steps_per_s": round(step / pure, 4) if step else None,
        "ms_per_step": round(1e3 * pure / step, 2) if step else None,
        "batch_size": cfg.batch_size, "hidden_size": cfg.hidden_size, "seq_len": cfg.seq_len, "params": params,
        "baseline_loss": round(task.baseline_loss, 6),
        "final_train_loss": _num(last_train[0]), "final_train_accuracy": _num(last_train[1]),
        "final_loss": evals[-1][1] if evals else None, "final_accuracy": evals[-1][2] if evals else None,
        "best_accuracy": max(e[2] for e in evals) if evals else None,
        "best_accuracy_step": max(evals, key=lambda e: e[2])[0] if evals else None,
        "device": str(device), "torch_threads": torch.get_num_threads(), "run_dir": run_dir,
    }
    write_json(f"{run_dir}/summary.json", summary)
    log.close()
    return summary


def _eval_and_log(model, task, device, log: RunLog, step: int, evals: list, row: dict) -> float:
    """Evaluate, log losses/eval_loss, charts/eval_accuracy and gate histograms; returns seconds spent."""
    t0 = time.perf_counter()
    loss, acc = evaluate(model, task, device)
    evals.append((step, round(loss, 6), round(acc, 6)))
    row.update(eval_loss=round(loss, 6), eval_accuracy=round(acc, 6))
    log.scalar("losses/eval_loss", loss, step)
    log.scalar("charts/eval_accuracy", acc, step)
    log.scalar("losses/baseline_loss", task.baseline_loss, step)
    gates = model.core.gate_stats()  # of the last evaluation batch
    if gates is not None:
        log.histogram("memory/gate", gates["gate"], step)
        log.histogram("memory/timescale", gates["timescale"].clamp_max(1e6), step)
    return time.perf_counter() - t0


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 6)
