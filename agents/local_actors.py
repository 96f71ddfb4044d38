"""IMPALA's actors as local processes (``--actors local``, the default): TorchBeast's design.

``--num-actors`` processes (spawned, CPU, one torch thread each) each hold an ``agents.actor.Actor``
and write its unrolls into preallocated shared-memory slots (``agents.actor.Buffers``); the learner
publishes its weights through ``SharedWeights``. Each actor talks to the learner through its own
pipe: the learner sends free slot indices, the actor answers with full ones. An actor that dies (an
environment raising, a killed process) is reported and restarted with fresh environments. Actors are
daemonic, ignore SIGINT, exit when the learner's pipe closes, and are terminated by
``LocalActorPool.close``. ``LocalActorPool`` implements ``agents.actor.ActorPool``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
from torch import multiprocessing as mp

from agents.actor import Actor, Buffers, SlotBook, actor_seed
from agents.config import TrainConfig
from policies.actor_critic import ActorCritic

# ---------------------------------------------------------------------------------------------
# published weights
# ---------------------------------------------------------------------------------------------

class SharedWeights:
    """The learner's latest state_dict in shared memory plus ``seq = [sequence, version]``.

    A seqlock: the sequence number is odd while the learner writes; a reader that saw the same even
    number before and after copying has a consistent copy. No lock is held by readers, so an actor
    killed mid-read blocks nobody.
    """

    def __init__(self, policy: ActorCritic):
        self.weights = {k: v.detach().to("cpu").clone().share_memory_()
                        for k, v in policy.state_dict().items()}
        self.seq = torch.zeros(2, dtype=torch.long).share_memory_()

    def publish(self, policy: ActorCritic, version: int) -> None:
        self.seq[0] += 1
        for k, v in policy.state_dict().items():
            self.weights[k].copy_(v.detach())
        self.seq[1] = version
        self.seq[0] += 1

    def fetch(self, policy: ActorCritic, have: int) -> int:
        """Load the published weights into ``policy`` unless it has them; returns the version."""
        while True:
            s1 = int(self.seq[0])
            if s1 % 2 == 0:
                version = int(self.seq[1])
                if version == have:
                    return have
                policy.load_state_dict(self.weights)
                if int(self.seq[0]) == s1:
                    return version
            time.sleep(0.001)


# ---------------------------------------------------------------------------------------------
# actor process
# ---------------------------------------------------------------------------------------------

def actor(index: int, cfg_dict: dict, seed: int, buffers: Buffers, weights: SharedWeights,
          conn: Connection, parent_pid: int) -> None:
    """One actor process: wait for a free slot, fill it with an unroll, send it back; repeat.

    Messages to the learner: ("unroll", slot, episodes, env_s, inference_s) and ("error", text).
    From the learner: a free slot index, or None to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)                 # Ctrl-C is the learner's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))        # run `finally` (close envs)
    torch.set_num_threads(1)
    me = None
    try:
        me = Actor(TrainConfig.from_dict(cfg_dict), seed)
        version = weights.fetch(me.policy, have=-1)
        free: list[int] = []
        while True:
            while not free or conn.poll(0):
                if not conn.poll(1.0):
                    if os.getppid() != parent_pid:
                        return                                   # the learner is gone
                    continue
                msg = conn.recv()
                if msg is None:
                    return
                free.append(msg)
            slot = free.pop(0)
            version = weights.fetch(me.policy, have=version)
            episodes, env_s, inference_s = me.unroll(buffers, slot, version)
            conn.send(("unroll", slot, episodes, env_s, inference_s))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return                                                   # the learner closed the pipe
    except Exception as err:  # noqa: BLE001 - reported to the learner, which restarts this actor
        lines = traceback.format_exc().strip().splitlines()
        try:
            conn.send(("error", f"{type(err).__name__}: {err}", "\n".join(lines[-12:])))
        except OSError:
            pass
        sys.exit(1)
    finally:
        if me is not None:
            me.close()


# ---------------------------------------------------------------------------------------------
# the actor processes as the learner sees them
# ---------------------------------------------------------------------------------------------

class LocalActorPool(SlotBook):
    """Starts, watches and restarts the actor processes; hands the learner full slots
    (``agents.actor.ActorPool``)."""

    def __init__(self, cfg: TrainConfig, policy: ActorCritic, seed_offset: int,
                 report: Callable[[str], None]):
        super().__init__(cfg, policy, shared=True)
        self.cfg = cfg
        self.weights = SharedWeights(policy)
        self.seed_offset = seed_offset
        self.report = report
        self.ctx = mp.get_context("spawn")  # safe with CUDA in the learner and with its threads
        self.procs: list[Any] = [None] * cfg.num_actors
        self.conns: list[Connection | None] = [None] * cfg.num_actors
        self.last_error: list[str | None] = [None] * cfg.num_actors

    def publish(self, policy: ActorCritic, version: int) -> None:
        """Make the learner's weights the ones actors act with from their next unroll."""
        self.weights.publish(policy, version)

    def start(self) -> None:
        for i in range(self.cfg.num_actors):
            self._start(i)

    def _start(self, i: int) -> None:
        seed = actor_seed(self.cfg, self.seed_offset, i, self.generation[i])
        mine, theirs = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=actor, name=f"impala-actor-{i}", daemon=True,
                             args=(i, self.cfg.to_dict(), seed, self.buffers, self.weights, theirs,
                                   os.getpid()))
        p.start()
        theirs.close()
        self.procs[i], self.conns[i] = p, mine
        for slot in self.slots(i):
            if slot not in self.full and slot not in self.held:
                mine.send(slot)

    def release(self, slot: int) -> None:
        """Give a slot back to its actor (if that actor is dead, its restart hands the slot out)."""
        self.held.discard(slot)
        try:
            self.conns[self.owner(slot)].send(slot)
        except OSError:
            pass

    def wait(self, timeout: float) -> None:
        """Take in what actors sent within ``timeout`` seconds; restart those that died."""
        conns = [c for c in self.conns if c is not None]
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs) if p is not None}
        ready = wait(conns + list(sentinels), timeout)
        dead = set()
        for r in ready:
            if r in sentinels:
                dead.add(sentinels[r])
                continue
            i = self.conns.index(r)
            if not self._drain(i):
                dead.add(i)
        for i in sorted(dead):
            self._drain(i)
            self._restart(i)

    def _drain(self, i: int) -> bool:
        """Read every pending message of actor i; False when its pipe is closed."""
        conn = self.conns[i]
        try:
            while conn.poll(0):
                msg = conn.recv()
                if msg[0] == "unroll":
                    self.received(i, *msg[1:])
                elif msg[0] == "error":
                    self.errors.append(f"actor {i}: {msg[1]}")
                    self.last_error[i] = msg[1]
                    self.report(f"actor {i} raised {msg[1]}\n{msg[2]}")
        except (EOFError, OSError):
            return False
        return True

    def _restart(self, i: int) -> None:
        p = self.procs[i]
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
        code = p.exitcode
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        self.conns[i].close()
        last, self.last_error[i] = self.last_error[i] or how, None
        self.count_death(i, last)
        self.report(f"actor {i} died ({how}); restarting it with fresh environments "
                    f"(restart {self.restarts} of the run)")
        self._start(i)

    def alive(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.is_alive()]

    def close(self) -> None:
        """Ask every actor to stop, then terminate and kill what is left: none outlives this."""
        for c in self.conns:
            if c is not None:
                try:
                    c.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            if p is not None:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
                p.join(timeout=3)
            if p is not None and p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            if c is not None:
                c.close()
