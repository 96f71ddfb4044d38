"""``ShardedVectorEnv``: the envs cut into slices, one stepped in this process and the others in
worker processes, each slice a ``SyncVectorEnv``.

Gymnasium's ``AsyncVectorEnv`` gives every env a process of its own, which costs more in messages
than a light env (a MiniGrid step, about 0.1 ms of Python) costs to step; ``SyncVectorEnv`` steps
them all on one core. Here the ``num_envs`` envs are cut into ``workers + 1`` equal slices: this
process steps the first while ``workers`` processes step the others (one message each way per step,
so that a worker's wake-up is hidden behind this process's own share of the work), every slice a
``SyncVectorEnv`` with SAME_STEP autoreset, and the results come back concatenated in env order: observations, rewards, terminations, truncations and ``info`` (keys, ``_key`` masks,
``final_obs``, nested ``final_info``) are what one ``SyncVectorEnv`` over all the envs gives, with
the same seeds (``tests/test_envs_sharded.py`` compares them step by step).

``envs.make(id, n, vectorization="shards", workers=K)`` builds one for any Gymnasium id;
evaluations use it on their own (``agents/evaluate.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ShardedVectorEnv(VectorEnv):
    """``len(env_fns)`` envs in this process and ``workers`` others (SAME_STEP autoreset), as one
    vector env.

    Args:
        env_fns: functions that build one env each (picklable where processes are spawned).
        workers: worker processes, 0 <= workers < len(env_fns) (0: all envs in this process).
        context: a ``multiprocessing`` start method (None: the platform's default, as gymnasium's
            ``AsyncVectorEnv``).

    Raises:
        ValueError: bad ``workers``; whatever a worker raised while building its envs (same type).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], workers: int, context: str | None = None):
        n = len(env_fns)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers < n:
            raise ValueError(f"workers must be an integer in [0, {n - 1}] (fewer than the envs), got {workers!r}")
        self.num_envs = n
        # slice k (0: this process, k >= 1: worker k - 1) holds envs bounds[k]:bounds[k + 1]
        self.bounds = [k * n // (workers + 1) for k in range(workers + 2)]
        self.sizes = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        ctx = mp.get_context(context)
        self._conns, self._procs, self._local = [], [], None
        self.closed = False
        try:
            for k in range(1, workers + 1):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, list(env_fns[self.bounds[k]:self.bounds[k + 1]])),
                                   name=f"ShardedVectorEnv-{k}", daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            self._local = SyncVectorEnv(list(env_fns[:self.bounds[1]]), autoreset_mode=AutoresetMode.SAME_STEP)
            self._gather()  # every worker has built its envs (or raises what it could not build)
        except BaseException:
            self.close()
            raise
        local = self._local
        self.single_observation_space, self.single_action_space = local.single_observation_space, local.single_action_space
        self.metadata = dict(local.metadata)
        self.metadata = {**self.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.spec = None
        self.render_mode = None

    # -- messages ----------------------------------------------------------------------------
    def _gather(self) -> list:
        """Every worker's answer to the command just sent, in worker order; a worker's error is
        raised here (the first one)."""
        answers, error = [], None
        for conn, proc in zip(self._conns, self._procs):
            try:
                ok, value = conn.recv()
            except EOFError:
                ok, value = False, RuntimeError(f"{proc.name} died (exit code {proc.exitcode})")
            if not ok and error is None:
                error = value
            answers.append(value)
        if error is not None:
            raise error
        return answers

    def _run(self, command: str, args: list, local: Callable[[Any], Any]) -> list:
        """Send ``command`` with ``args[k]`` to worker k - 1 (k >= 1), run ``local(args[0])`` here
        meanwhile, and return the answers of every slice in order."""
        for conn, a in zip(self._conns, args[1:]):
            conn.send((command, a))
        try:
            mine = local(args[0])
        except BaseException:
            self._gather_quietly()
            raise
        return [mine, *self._gather()]

    def _gather_quietly(self) -> None:
        try:
            self._gather()
        except Exception:  # noqa: BLE001 - this process's own error is the one raised
            pass

    def _slices(self, value) -> list:
        return [value[a:b] for a, b in zip(self.bounds, self.bounds[1:])]

    # -- the vector env ----------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed if isinstance(seed, (int, np.integer)) else None)
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]  # as SyncVectorEnv seeds env i
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        opts = [options] * (len(self._conns) + 1)
        if options is not None and "reset_mask" in options:
            opts = [{**options, "reset_mask": m} for m in self._slices(np.asarray(options["reset_mask"]))]
        answers = self._run("reset", [{"seed": s, "options": o} for s, o in zip(self._slices(seeds), opts)],
                            lambda a: self._local.reset(**a))
        obs, infos = zip(*answers)
        return _concat(list(obs)), _merge_infos(list(infos), self.sizes)

    def step(self, actions) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        answers = self._run("step", self._slices(np.asarray(actions)), self._local.step)
        obs, rewards, terminated, truncated, infos = zip(*answers)
        return (_concat(list(obs)), np.concatenate(rewards), np.concatenate(terminated),
                np.concatenate(truncated), _merge_infos(list(infos), self.sizes))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        parts = self._run("get_attr", [name] * (len(self._conns) + 1), self._local.get_attr)
        return tuple(v for part in parts for v in part)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        parts = self._run("call", [(name, args, kwargs)] * (len(self._conns) + 1),
                          lambda a: self._local.call(a[0], *a[1], **a[2]))
        return tuple(v for part in parts for v in part)

    def close_extras(self, **kwargs: Any) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        if self._local is not None:
            self._local.close()

    def close(self, **kwargs: Any) -> None:
        if not self.closed:
            self.close_extras(**kwargs)
            self.closed = True


def _worker(conn, env_fns: list) -> None:
    """A worker: builds its SyncVectorEnv, then answers (ok, value) to each command until "close"."""
    venv = None
    try:
        venv = SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        conn.send((True, None))
        while True:
            command, args = conn.recv()
            if command == "close":
                break
            try:
                if command == "step":
                    value = venv.step(args)
                elif command == "reset":
                    value = venv.reset(**args)
                elif command == "get_attr":
                    value = venv.get_attr(args)
                elif command == "call":
                    value = venv.call(args[0], *args[1], **args[2])
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send((True, value))
            except Exception as err:  # noqa: BLE001 - passed to the parent, which raises it
                conn.send((False, _picklable(err)))
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group: the parent stops the run and closes us
    except Exception as err:  # noqa: BLE001 - building the envs failed: the parent raises it
        try:
            conn.send((False, _picklable(err)))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if venv is not None:
            venv.close()
        conn.close()


def _picklable(err: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        return RuntimeError("".join(traceback.format_exception_only(type(err), err)).strip())


def _concat(parts: list):
    """Batched observations of the workers, joined along the env axis (dicts key by key)."""
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def _merge_infos(parts: list[dict], sizes: list[int]) -> dict:
    """The ``info`` one SyncVectorEnv over all the envs would give, from its workers' ``info``s: each
    key's array joined along the env axis, a worker without the key filling its part as
    ``VectorEnv._add_info`` does (zeros, False masks, None objects)."""
    merged: dict = {}
    keys = list(dict.fromkeys(k for p in parts for k in p))
    for key in keys:
        present = [p[key] for p in parts if key in p]
        if isinstance(present[0], dict):
            merged[key] = _merge_infos([p.get(key, {}) for p in parts], sizes)
            continue
        like = present[0]
        pieces = []
        for p, size in zip(parts, sizes):
            if key in p:
                pieces.append(p[key])
            elif like.dtype == object:
                pieces.append(np.full(size, None, dtype=object))
            else:
                pieces.append(np.zeros((size, *like.shape[1:]), dtype=like.dtype))
        merged[key] = np.concatenate(pieces)
    return merged
