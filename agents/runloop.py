"""The run loop both learners share: everything a training run does around its updates.

A learner's ``train`` makes its storage and optimizer, then reads top to bottom::

    run = RunLoop(cfg, policy, optimizer, run_dir, device, resume, stop, on_progress, algo="ppo")
    with run:
        while run.next_update():
            ...                                   # collect, advantages, update
            run.collected(steps)
            run.end_update(losses)
    return run.finish()

``RunLoop`` owns: resuming (weights, optimizer, counters, episode statistics, RNG states and, for a
learner that steps its envs itself, the envs, replayed from the recorded actions for a bit-exact
resume), learning-rate annealing (``--anneal-lr``), the TensorBoard scalars (``charts/``,
``losses/``, ``perf/``, ``memory/``), interim evaluations (``--eval-every``), periodic checkpoints
(``--save-every``) and the final one, the progress bar, Ctrl-C and SIGTERM (the first finishes the
update, saves and stops; a second aborts), divergence (a ``NonFiniteLossError`` raised in the loop
ends the run as "diverged: ..." and keeps the last good checkpoint), failures (the exceptions a
learner names end it as "failed: ..."), the final evaluation and summary.json.

Under torchrun (PPO's data-parallel mode, ``agents.distributed``) rank 0 alone logs, evaluates and
writes; every rank stops after the same update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

from agents import checkpoint as ckpt
from agents import distributed
from agents.config import TrainConfig
from agents.evaluate import evaluate, finish_run
from agents.logger import Logger
from agents.reward_scale import RewardScaler
from agents.rollout import Carry, EpisodeStats, Timers, initial_carry
from policies.actor_critic import ActorCritic, obs_zeros


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/Inf; training stops and keeps the last good checkpoint."""


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Raise ``NonFiniteLossError`` unless the loss and the gradient norm (scalars) are finite."""
    if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"loss became {loss.item()} (gradient norm {grad_norm.item()}): "
                                 "lower --learning-rate or --max-grad-norm")


class StopFlag:
    """First Ctrl-C or SIGTERM: finish the current update, save, stop. Second one: abort at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopFlag:  # noqa: PYI034 - typing.Self needs Python 3.11
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            if old is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, old)
        self._old = {}


class RunLoop:
    """One training run's bookkeeping around the updates (see the module docstring).

    Args:
        cfg, policy, optimizer, run_dir, device, resume, stop, on_progress: as the learners'
            ``train`` takes them; ``stop(update) -> bool`` is asked after each update.
        algo: "ppo" or "impala", for summary.json.
        venv, seed: the envs a learner steps itself and their seed (this rank's); ``carry`` is then
            their first carry, restored from the checkpoint on resume. Without: checkpoints save an
            empty carry.
        event_log: a file in the run folder that ``report`` also appends to.
        failures: exceptions that end the run as "failed: ..." (reported), not as an error.
    """

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, optimizer: torch.optim.Optimizer,
                 run_dir: str, device: torch.device, resume: dict | None = None,
                 stop: Callable[[int], bool] | None = None,
                 on_progress: Callable[[dict], None] | None = None, *, algo: str, venv=None,
                 seed: int | None = None, event_log: str | None = None,
                 failures: tuple[type[Exception], ...] = ()):
        self.cfg, self.policy, self.optimizer = cfg, policy, optimizer
        self.run_dir, self.device, self.algo = run_dir, device, algo
        self._stop, self.on_progress = stop, on_progress
        self.event_log, self.failures = event_log, failures
        self.stats, self.timers = EpisodeStats(), Timers()
        self.other_s: dict[str, float] = {}  # other activities (IMPALA's wait) since the last log
        self.perf_s = {"env": 0.0, "inference": 0.0, "learn": 0.0}  # seconds of the logged windows
        main = distributed.is_main()
        self.logger = (Logger(run_dir, purge_step=resume["global_step"] if resume else None)
                       if main else distributed.NullLogger())
        self.global_step, self.update, self.wall_before = 0, 0, 0.0
        self.best_success: float | None = None
        self.status = "finished"
        self.record_actions = (venv is not None and cfg.exact_resume
                               and distributed.world_size() == 1)
        self.action_log: list[torch.Tensor] = []
        self.carry: Carry | None = None
        if resume is not None:
            policy.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            self.global_step, self.update = resume["global_step"], resume["update"]
            self.wall_before, self.best_success = resume["wall_time_s"], resume["best_success_rate"]
            self.stats.load_state_dict(resume["stats"])
        self.reward_scale = None  # --norm-reward (PPO): the learner's reward scaling
        if venv is not None:
            self.carry = self._start_envs(venv, seed, resume)
            if cfg.norm_reward:
                self.reward_scale = RewardScaler(venv.num_envs, cfg.gamma)
                if resume is not None and resume.get("reward_scale") is not None:
                    replayed = resume.get("actions") is not None and distributed.world_size() == 1
                    self.reward_scale.load_state_dict(resume["reward_scale"], keep_returns=replayed)
        if resume is not None:  # after the envs: their replay must not shift the training streams
            ckpt.set_rng_state(resume["rng"])
            if distributed.world_size() > 1:
                torch.manual_seed(seed + self.global_step)
        self.bar = tqdm(total=cfg.num_updates * cfg.batch_size, initial=self.global_step,
                        unit="step", unit_scale=True, dynamic_ncols=True,
                        disable=not cfg.progress or not main,
                        desc="train" if algo == "ppo" else algo, smoothing=0.1)
        self._flag = StopFlag()
        self._halt = False
        self.start, self.start_step = time.perf_counter(), self.global_step

    def _start_envs(self, venv, seed: int, resume: dict | None) -> Carry:
        if resume is None:
            return initial_carry(self.policy, venv, seed, self.device)
        if distributed.world_size() > 1:  # rank 0's recorded actions fit only its envs: re-seed
            resume = {**resume, "actions": None}
        return ckpt.restore_envs(resume, venv, self.policy, seed, self.device, self.action_log)

    # ---- the loop ----------------------------------------------------------------------------

    def __enter__(self) -> RunLoop:  # noqa: PYI034 - typing.Self needs Python 3.11
        self._flag.__enter__()
        self.start, self.start_step = time.perf_counter(), self.global_step
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        handled = False
        if isinstance(exc, NonFiniteLossError):
            self.status, handled = f"diverged: {exc}", True
        elif self.failures and isinstance(exc, self.failures):
            self.status, handled = f"failed: {exc}", True
            self.report(self.status)
        self._flag.__exit__()
        self.bar.close()
        return handled

    @property
    def interrupted(self) -> bool:
        """Ctrl-C or SIGTERM arrived (this process's flag; ``end_update`` agrees over ranks)."""
        return self._flag.set

    def next_update(self) -> bool:
        """Whether to run another update; sets its learning rate (``--anneal-lr``)."""
        if self._halt or self.update >= self.cfg.num_updates:
            return False
        if self.cfg.anneal_lr:
            frac = 1.0 - self.update / self.cfg.num_updates
            for group in self.optimizer.param_groups:
                group["lr"] = frac * self.cfg.learning_rate
        return True

    @contextlib.contextmanager
    def timing(self, activity: str) -> Iterator[None]:
        """Add the block's seconds to ``activity``: env, inference, learn, or another one (logged
        as perf/<activity>_s, summed in summary.json's perf_s)."""
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        if hasattr(self.timers, activity):
            setattr(self.timers, activity, getattr(self.timers, activity) + seconds)
        else:
            self.other_s[activity] = self.other_s.get(activity, 0.0) + seconds

    def collected(self, steps: int, carry: Carry | None = None,
                  actions: torch.Tensor | None = None) -> None:
        """Count ``steps`` env steps; keep the learner's ``carry`` for checkpoints and record its
        ``actions`` ([T, B, ...]) for an exact resume."""
        self.global_step += steps
        if carry is not None:
            self.carry = carry
        if actions is not None and self.record_actions:
            self.action_log.append(ckpt.compact_actions(actions))

    def end_update(self, losses: dict[str, torch.Tensor],
                   perf: Callable[[], dict[str, float]] | None = None) -> None:
        """After an update: log (``perf()``: more perf/ scalars), evaluate, report progress,
        save, and ask ``stop`` and the signals whether to go on."""
        cfg, step = self.cfg, self.global_step
        self.update += 1
        last = self.update == cfg.num_updates
        episodes = self.stats.flush()
        recent_return, recent_success = self.stats.recent()
        self.best_success = self.stats.best_success(self.best_success)
        sps = (step - self.start_step) / max(time.perf_counter() - self.start, 1e-9)
        if self.update % cfg.log_every == 0 or last:
            log_scalars(self.logger, self.policy, step, self.update, cfg, episodes, losses,
                        self.timers, sps, self.optimizer.param_groups[0]["lr"])
            more = {f"{k}_s": v for k, v in self.other_s.items()} | (perf() if perf else {})
            for k, v in more.items():
                self.logger.scalar(f"perf/{k}", v, step)
            self._close_window()
        if (cfg.eval_every and self.update % cfg.eval_every == 0 and not last
                and distributed.is_main()):
            interim_eval(self.logger, self.policy, cfg, self.device, step)
        progress = {"step": step, "update": self.update, "sps": sps, "return": recent_return,
                    "success": recent_success}
        self.bar.update(cfg.batch_size)
        self.bar.set_postfix_str(_postfix(progress), refresh=False)
        if self.on_progress is not None:
            self.on_progress(progress)
        if self.update % cfg.save_every == 0 and not last:
            self.save()
        halt = self._flag.set or (self._stop is not None and self._stop(self.update))
        if distributed.any_rank(halt, self.device):  # every rank stops after the same update
            self.status, self._halt = "interrupted", True

    def _close_window(self) -> None:
        """Add the seconds since the last log to the run's totals and start counting afresh."""
        for k in ("env", "inference", "learn"):
            self.perf_s[k] += getattr(self.timers, k)
        for k, v in self.other_s.items():
            self.perf_s[k] = self.perf_s.get(k, 0.0) + v
        self.timers.reset()
        self.other_s = dict.fromkeys(self.other_s, 0.0)

    # ---- around it ---------------------------------------------------------------------------

    def report(self, message: str) -> None:
        """A line on stderr above the progress bar, also appended to the run's ``event_log``."""
        self.bar.write(message, file=sys.stderr)
        if self.event_log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(os.path.join(self.run_dir, self.event_log), "a") as f:
                f.write(f"{stamp} step {self.global_step}: {message}\n")

    def save(self) -> str:
        """Write the checkpoint (rank 0 alone); returns its path."""
        if not distributed.is_main():
            return ckpt.path(self.run_dir)
        carry = self.carry if self.carry is not None else empty_carry(self.policy)
        return ckpt.save(self.run_dir, cfg=self.cfg, policy=self.policy, optimizer=self.optimizer,
                         global_step=self.global_step, update=self.update,
                         wall_time_s=self.wall_before + time.perf_counter() - self.start,
                         carry=carry, stats=self.stats, best_success_rate=self.best_success,
                         action_log=self.action_log if self.record_actions else None,
                         reward_scale=self.reward_scale)

    def finish(self, extra: dict | None = None) -> dict:
        """The final checkpoint (unless diverged), evaluation and summary.json (``extra``: the
        learner's own entries); returns the summary."""
        if self.status == "finished" and self.update < self.cfg.num_updates:
            self.status = "interrupted"  # the learner left the loop early (a signal as it waited)
        checkpoint = ckpt.path(self.run_dir) if self.status.startswith("diverged") else self.save()
        self._close_window()
        wall = self.wall_before + time.perf_counter() - self.start
        cfg = self.cfg if distributed.is_main() else dataclasses.replace(self.cfg, eval_episodes=0)
        summary = finish_run(cfg, self.policy, self.device, self.logger, algo=self.algo,
                             status=self.status, stats=self.stats, global_step=self.global_step,
                             updates=self.update, wall=wall, best_success=self.best_success,
                             checkpoint=checkpoint, run_dir=self.run_dir, perf_s=self.perf_s,
                             extra=extra)
        distributed.barrier()  # the other ranks wait for rank 0's evaluation and summary.json
        return summary


def empty_carry(policy: ActorCritic) -> Carry:
    """The checkpoint's carry of a learner without envs (IMPALA's actors start anew on resume)."""
    head = policy.head
    return Carry(obs=obs_zeros(policy.observation_space, (0,), "cpu"),
                 reset=torch.zeros(0, dtype=torch.bool),
                 prev_action=torch.zeros(0, *head.action_shape(), dtype=head.action_dtype()),
                 prev_reward=torch.zeros(0), state=policy.initial_state(0, "cpu"))


def interim_eval(logger: Logger, policy: ActorCritic, cfg: TrainConfig, device: torch.device,
                 step: int) -> None:
    """32 greedy episodes in fresh envs, logged as charts/eval_*; touches no training RNG."""
    result = evaluate(policy, cfg, device, episodes=32, greedy=True)
    logger.scalar("charts/eval_return", result["return_mean"], step)
    if result["success_rate"] is not None:
        logger.scalar("charts/eval_success_rate", result["success_rate"], step)


def _postfix(p: dict) -> str:
    parts = [f"SPS {p['sps']:,.0f}"]
    if p["return"] is not None:
        parts.append(f"return {p['return']:.3f}")
    if p["success"] is not None:
        parts.append(f"success {p['success']:.2f}")
    return ", ".join(parts)


def log_scalars(logger: Logger, policy: ActorCritic, step: int, update_idx: int, cfg: TrainConfig,
                episodes: dict, losses: dict, timers: Timers, sps: float, lr: float) -> None:
    """One update's scalars: charts/ (episodes, SPS, learning rate), losses/, perf/ (seconds and
    shares of env, inference and learn since the last log) and the core's memory/ gate statistics
    (histograms every 10th log)."""
    for k, v in episodes.items():
        logger.scalar(f"charts/{k}", v, step)
    logger.scalar("charts/SPS", sps, step)
    logger.scalar("charts/learning_rate", lr, step)
    for k, v in losses.items():
        logger.scalar(f"losses/{k}", float(v), step)
    total = timers.env + timers.inference + timers.learn
    for k in ("env", "inference", "learn"):
        seconds = getattr(timers, k)
        logger.scalar(f"perf/{k}_s", seconds, step)
        logger.scalar(f"perf/{k}_share", seconds / total if total > 0 else math.nan, step)
    gates = policy.core.gate_stats() if hasattr(policy.core, "gate_stats") else None
    if gates:
        g, tau = gates["gate"], gates["timescale"]
        logger.scalar("memory/gate_mean", float(g.mean()), step)
        logger.scalar("memory/timescale_mean", float(tau.mean()), step)
        logger.scalar("memory/timescale_median", float(tau.median()), step)
        if (update_idx // cfg.log_every) % 10 == 1 or update_idx == cfg.num_updates:
            logger.histogram("memory/gate", g, step)
            logger.histogram("memory/log10_timescale", tau.log10(), step)
