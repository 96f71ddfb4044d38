"""IMPALA's actors as Ray actors (``--actors ray``): the same actors and unrolls as
``agents.local_actors``, carried by Ray instead of shared memory, on one machine or a Ray cluster.

Each ``UnrollWorker`` is a Ray actor (one CPU, one torch thread) holding an ``agents.actor.Actor``:
its envs, a CPU copy of the policy and the carry between unrolls. A call to ``unroll`` first asks
the ``WeightStore`` actor for the newest weights (the learner ``ray.put``s its state_dict once per
update and hands the store the reference), loads them if they are newer than the ones it has, then
fills a private one-slot ``Buffers`` and returns that slot's tensors through Ray's object store.

The learner side, ``RayActorPool``, implements ``agents.actor.ActorPool``: every slot of
its (learner-private) ``Buffers`` is owned by one worker and has one ``unroll`` call in flight while
it is free; a finished call is copied into its slot, which becomes full; releasing a slot submits
the next call. So the learner code is the same for both transports.

Faults: workers are created with ``max_restarts=-1`` and ``max_task_retries=0``. A killed worker
process fails its calls with ``RayActorError``; an environment that raises fails the call with
``RayTaskError`` and the pool kills the worker with ``ray.kill(no_restart=False)`` (its envs are in
an unknown state). Either way Ray restarts the worker process, the pool drops the in-flight unrolls,
counts one restart (``perf/actor_restarts``), waits for the new process to answer and gives it fresh
environments (a new seed). A worker that dies ``MAX_CONSECUTIVE_FAILURES`` times in a row without
producing an unroll stops the run with its last error.

Ray: with ``--ray-address`` unset the pool starts a private instance (``num_cpus``: this machine's
CPUs, at least one per actor; no dashboard; Ray's logging at errors) and ``close`` stops it with
``ray.shutdown()``, which also ends its processes; with ``auto`` or ``HOST:PORT`` it joins a running
cluster, and ``close`` kills its own actors and disconnects. If Ray is already initialised in the
process (tests, notebooks) the pool uses it and leaves it running.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch

from agents.actor import Actor, ActorFailedError, Buffers, SlotBook, actor_seed
from agents.config import TrainConfig
from policies.actor_critic import ActorCritic


def import_ray():
    try:
        import ray
    except ImportError:  # the config checks this first; kept for callers that skip it
        raise ImportError('--actors ray needs Ray: pip install -e ".[ray]"') from None
    return ray


# ---------------------------------------------------------------------------------------------
# inside Ray
# ---------------------------------------------------------------------------------------------

class WeightStore:
    """Holds the newest published weights: a version and the ObjectRef of its state_dict."""

    def __init__(self) -> None:
        self.version, self.refs = -1, None

    def set(self, version: int, refs: list) -> None:  # a list, so Ray passes the ref unresolved
        self.version, self.refs = version, refs

    def get(self, have: int) -> tuple[int, list | None]:
        return (self.version, None) if have == self.version else (self.version, self.refs)


class UnrollWorker:
    """A Ray actor stepping ``num_envs / num_actors`` envs; builds them on the first call of a seed."""

    def __init__(self, cfg_dict: dict, store_name: str) -> None:
        import ray

        torch.set_num_threads(1)  # as the local actors: many actors share a machine's cores
        self.cfg = TrainConfig.from_dict(cfg_dict)
        self.store = ray.get_actor(store_name)  # by name: a restart needs no object-store argument
        self.actor: Actor | None = None
        self.seed, self.version = None, -1
        self.buffers: Buffers | None = None

    def pid(self) -> int:
        return os.getpid()

    def unroll(self, seed: int) -> dict[str, Any]:
        import ray

        if seed != self.seed:
            if self.actor is not None:
                self.actor.close()
            self.actor, self.seed, self.version = Actor(self.cfg, seed), seed, -1
            self.buffers = Buffers(self.actor.policy, 1, self.cfg.unroll_length,
                                   self.cfg.num_envs // self.cfg.num_actors, shared=False)
        version, refs = ray.get(self.store.get.remote(self.version))
        if refs is not None:
            self.actor.policy.load_state_dict(ray.get(refs[0]))
            self.version = version
        episodes, env_s, inference_s = self.actor.unroll(self.buffers, 0, self.version)
        return {"tensors": [x[0] for x in self.buffers.tensors()], "episodes": episodes,
                "env_s": env_s, "inference_s": inference_s}


# ---------------------------------------------------------------------------------------------
# the learner's side
# ---------------------------------------------------------------------------------------------

def init_ray(address: str | None, num_actors: int) -> bool:
    """Connect to Ray (a private instance when ``address`` is None); True when this call did."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    sigterm = signal.getsignal(signal.SIGTERM)
    if address is None:  # "local": a new instance even where RAY_ADDRESS or `ray start` is around
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(address="local", num_cpus=max(cpus or 1, num_actors), **quiet)
    else:
        ray.init(address=address, **quiet)
    try:  # ray.init installs its own SIGTERM handler: the learner's (stop, save) comes first
        signal.signal(signal.SIGTERM, sigterm)
    except (ValueError, TypeError):  # not the main thread, or a handler set outside Python
        pass
    return True


class RayActorPool(SlotBook):
    """``agents.actor.ActorPool`` over Ray actors (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, seed_offset: int,
                 report: Callable[[str], None]):
        super().__init__(cfg, policy, shared=False)
        self.cfg = cfg
        self.seed_offset, self.report = seed_offset, report
        n = cfg.num_actors
        self.workers: list[Any] = []
        self.store = None
        self.ready = [False] * n          # the worker answered since its last (re)start
        self.pids: list[int | None] = [None] * n
        self.ping_failures = [0] * n
        self.calls: dict[Any, tuple[int, int | None, int]] = {}  # ref -> (actor, slot, generation)
        self.owns_ray = False
        self._published: tuple[dict, int] | None = None
        self._weights_ref = None

    def publish(self, policy: ActorCritic, version: int) -> None:
        """``ray.put`` the weights and hand the reference to the store (before ``start``: then)."""
        self._published = ({k: v.detach().to("cpu") for k, v in policy.state_dict().items()},
                           version)
        if self.store is not None:
            self._put()

    def _put(self) -> None:
        weights, version = self._published
        self._published = None
        self._weights_ref = import_ray().put(weights)  # kept alive while the store hands it out
        self.store.set.remote(version, [self._weights_ref])

    def start(self) -> None:
        ray = import_ray()
        self.owns_ray = init_ray(self.cfg.ray_address, self.cfg.num_actors)
        name = f"urlstm-weights-{uuid.uuid4().hex}"
        self.store = ray.remote(num_cpus=0)(WeightStore).options(name=name).remote()
        if self._published is not None:
            self._put()
        worker = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(UnrollWorker)
        cfg = self.cfg.to_dict()
        self.workers = [worker.remote(cfg, name) for _ in range(self.cfg.num_actors)]
        for i in range(self.cfg.num_actors):
            self._ping(i)

    def _ping(self, i: int) -> None:
        """Ask worker i for its pid; unrolls are submitted once it answers (it may be restarting)."""
        self.ready[i] = False
        self.calls[self.workers[i].pid.remote()] = (i, None, self.generation[i])

    def _submit(self, i: int, slot: int) -> None:
        seed = actor_seed(self.cfg, self.seed_offset, i, self.generation[i])
        self.calls[self.workers[i].unroll.remote(seed)] = (i, slot, self.generation[i])

    def _free_slots(self, i: int) -> list[int]:
        busy = {s for (_, s, _) in self.calls.values()} | self.held | set(self.full)
        return [s for s in self.slots(i) if s not in busy]

    def release(self, slot: int) -> None:
        self.held.discard(slot)
        i = self.owner(slot)
        if self.ready[i]:
            self._submit(i, slot)

    def wait(self, timeout: float) -> None:
        """Take in the calls that finish within ``timeout`` seconds; restart workers that died."""
        ray = import_ray()
        if not self.calls:
            time.sleep(timeout)
            return
        done, _ = ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=0)
        for ref in done:
            i, slot, generation = self.calls.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayTaskError as err:   # its environment (or code) raised
                if slot is not None and generation == self.generation[i]:
                    self._raised(i, err)
                continue
            except ray.exceptions.RayError as err:       # its process died
                if slot is None:
                    self._ping_failed(i, err)
                elif generation == self.generation[i]:
                    self._died(i, f"its process died ({type(err).__name__})")
                continue                                 # else: a call of a death already counted
            if generation != self.generation[i]:
                continue  # from before a restart: dropped
            if slot is None:
                self.pids[i], self.ready[i], self.ping_failures[i] = out, True, 0
                for s in self._free_slots(i):
                    self._submit(i, s)
                continue
            self._store(i, slot, out)

    def _store(self, i: int, slot: int, out: dict) -> None:
        for dst, src in zip(self.buffers.tensors(), out["tensors"]):
            dst[slot].copy_(src)
        self.received(i, slot, out["episodes"], out["env_s"], out["inference_s"])

    def _raised(self, i: int, err: Exception) -> None:
        cause = getattr(err, "cause", None) or err
        text = f"{type(cause).__name__}: {cause}".strip().splitlines()[0]
        self.errors.append(f"actor {i}: {text}")
        self.report(f"actor {i} raised {text}")
        import_ray().kill(self.workers[i], no_restart=False)  # its envs are broken: Ray restarts it
        self._died(i, text)

    def _ping_failed(self, i: int, err: Exception) -> None:
        """The ping raced the death it follows, or the worker cannot come back."""
        self.ping_failures[i] += 1
        if self.ping_failures[i] > 50:
            raise ActorFailedError(f"actor {i} does not come back after a restart: "
                                   f"{type(err).__name__}: {str(err).strip()[:200]}")
        time.sleep(0.1)
        self._ping(i)

    def _died(self, i: int, how: str) -> None:
        self.count_death(i, how)
        self.report(f"actor {i} died ({how}); Ray restarts it, with fresh environments "
                    f"(restart {self.restarts} of the run)")
        self._ping(i)

    def alive(self) -> list[int]:
        return [p for p in self.pids if p is not None]

    def close(self) -> None:
        """Kill this pool's actors; stop Ray if this pool started it."""
        ray = import_ray()
        try:
            if ray.is_initialized():
                for w in [*self.workers, self.store]:
                    if w is not None:
                        ray.kill(w, no_restart=True)
        finally:
            self.calls.clear()
            if self.owns_ray:
                ray.shutdown()

