"""Data-parallel PPO under torchrun: process group, rank, per-rank envs and seeds, averaged
gradients, and the rule that rank 0 alone writes.

``torchrun --nproc_per_node N train.py ...`` (and ``--nnodes M`` across machines) starts N * M copies
of ``train.py``; torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address.
Every process (rank) then:

* joins the process group (gloo on the CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK``);
* steps ``num_envs / world_size`` environments: rank r gets envs ``r * B .. (r + 1) * B - 1`` of a
  one-process run (seed ``seed + r * B``), and seeds torch and numpy with that seed too;
* runs the same PPO update on its own rollout through ``DistributedDataParallel``, which averages
  the gradients across ranks during ``backward``; clipping the averaged gradient and Adam's step
  then keep the replicas identical (DDP also broadcasts rank 0's weights at the start);
* agrees with the others, once per update, on whether to stop (Ctrl-C, SIGTERM, a ``stop``
  callback) and on early stopping by ``--target-kl`` (the KL averaged over ranks), so that no rank
  is left waiting in an all-reduce.

Rank 0 alone creates the run folder and writes config.json, TensorBoard scalars, checkpoints,
evaluations and summary.json; the training episode statistics are those of its own envs. The other
ranks log nothing and wait at a barrier at the end. With ``--resume``, rank 0 reads the checkpoint
and sends it to every rank (no shared disk needed); the envs are then re-seeded per rank (the
recorded actions replay only rank 0's envs), so a resumed data-parallel run is not bit-exact.

DDP wraps ``ActorCritic.evaluate`` (the training pass the PPO minibatch loop calls once per
backward) in a module whose ``forward`` is that call: whole recurrent sequences, resets and
start states included, go through DDP unchanged, so DDP fits the recurrent minibatch loop and no
hand-written gradient all-reduce is needed.

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is a no-op.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch
from torch import distributed as dist
from torch import nn

from agents.config import ConfigError, TrainConfig


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and without torchrun): the process that writes the run folder."""
    return rank() == 0


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_name: str) -> None:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA); nothing without torchrun."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def check(cfg: TrainConfig) -> None:
    """Settings that a data-parallel run cannot have; ConfigError (one line, exit 2) otherwise."""
    n = world_size()
    if n == 1:
        return
    if cfg.algo != "ppo":
        raise ConfigError(f"torchrun runs data-parallel PPO learners; --algo {cfg.algo} scales out "
                          "with its actors instead (--actors ray): start it without torchrun")
    if cfg.num_envs % n:
        raise ConfigError(f"--num-envs ({cfg.num_envs}) must be a multiple of the {n} torchrun "
                          f"processes (each steps num_envs / {n})")
    local = local_config(cfg)
    if local.num_sequences % cfg.num_minibatches:
        raise ConfigError(f"--num-minibatches ({cfg.num_minibatches}) must divide each process's "
                          f"training sequences, num_envs / {n} * num_steps / seq_len = "
                          f"{local.num_sequences}")


def device(resolved: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun on CUDA, else ``resolved``."""
    if world_size() > 1 and resolved.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return resolved


def local_config(cfg: TrainConfig) -> TrainConfig:
    """This rank's share: ``num_envs / world_size`` envs, seeded as envs r*B.. of one process."""
    n = world_size()
    if n == 1:
        return cfg
    B = cfg.num_envs // n
    return dataclasses.replace(cfg, num_envs=B, seed=cfg.seed + rank() * B)


def on_rank0(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on rank 0, its result (or its exception) sent to every rank."""
    if world_size() == 1:
        return fn(*args)
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn(*args))
        except Exception as err:  # noqa: BLE001 - raised again on every rank
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


class _Evaluate(nn.Module):
    """``policy.evaluate`` as a module's forward, so that DDP can wrap it."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, *args: Any, **kwargs: Any):
        return self.policy.evaluate(*args, **kwargs)


class DataParallelPolicy:
    """What ``ppo.update`` uses of the policy (``evaluate``, ``parameters``), with DDP's averaged
    gradients. The wrapped policy stays the one to act, save and evaluate with."""

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self.ddp = nn.parallel.DistributedDataParallel(_Evaluate(policy))

    def evaluate(self, *args: Any, **kwargs: Any):
        return self.ddp(*args, **kwargs)

    def parameters(self):
        return self.policy.parameters()


def wrap(policy: nn.Module):
    """The policy for the update: DDP-wrapped under torchrun, else the policy itself."""
    return DataParallelPolicy(policy) if world_size() > 1 else policy


def mean(x: torch.Tensor) -> torch.Tensor:
    """The average of a tensor over ranks (the tensor itself without torchrun)."""
    if world_size() == 1:
        return x
    return total(x) / world_size()


def total(x: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over ranks (the tensor itself without torchrun); a CPU tensor travels
    through the process group's device."""
    if world_size() == 1:
        return x
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
    y = x.detach().to(dev).clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (every rank gets the same answer)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class NullLogger:
    """The logger of ranks other than 0: writes nothing."""

    def scalar(self, *args: Any) -> None:
        pass

    def histogram(self, *args: Any) -> None:
        pass

    def write_json(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass
