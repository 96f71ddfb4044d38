"""Checkpoints: model, optimizer, counters, config, RNG states and the run's carry, written atomically.

Loading uses ``torch.load(weights_only=True)``; anything that is not a readable urlstm checkpoint
raises ``CheckpointError`` with a one-line reason. Exact resume: the environments are deterministic
given their seed and actions, so the checkpoint keeps the actions sent so far (one byte per env step
for small discrete action spaces) and a resumed run replays them to bring every env back to where it
stopped.
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

from agents.rollout import Carry, env_actions, initial_carry
from policies.actor_critic import obs_to_tensor, tree_map

FORMAT = "urlstm-ppo-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """The file is missing, corrupt, or not a urlstm checkpoint; or one could not be written."""


def path(run_dir: str) -> str:
    return os.path.join(run_dir, FILENAME)


def resolve(location: str) -> str:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    if os.path.isdir(location):
        location = path(location)
    if not os.path.isfile(location):
        raise CheckpointError(f"no checkpoint at {location}")
    return location


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------

def get_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# actions log
# ---------------------------------------------------------------------------------------------

def compact_actions(actions: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] actions -> a compact CPU copy (uint8 / int32 for discrete, float32 for Box)."""
    a = actions.detach().to("cpu")
    if a.dtype.is_floating_point:
        return a.clone()
    hi = int(a.max()) if a.numel() else 0
    return a.to(torch.uint8 if hi < 256 and int(a.min()) >= 0 else torch.int32)


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------

def save(run_dir: str, *, cfg, policy, optimizer, global_step: int, update: int, wall_time_s: float,
         carry: Carry, stats, best_success_rate: float | None,
         action_log: list[torch.Tensor] | None, reward_scale=None) -> str:
    """Write ``run_dir/checkpoint.pt`` atomically (temp file + rename); returns its path."""
    if action_log is not None and len(action_log) > 1:
        action_log[:] = [torch.cat(action_log, 0)]  # keep one growing chunk
    cpu = lambda x: x.detach().to("cpu")  # noqa: E731
    data = {
        "format": FORMAT, "version": VERSION,
        "config": cfg.to_dict(),
        "policy": policy.describe(),  # rebuilds the network without the env (policies.load_policy)
        "model": {k: cpu(v) for k, v in policy.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "global_step": int(global_step), "update": int(update), "wall_time_s": float(wall_time_s),
        "carry": {"obs": tree_map(cpu, carry.obs), "reset": cpu(carry.reset),
                  "prev_action": cpu(carry.prev_action), "prev_reward": cpu(carry.prev_reward),
                  "state": tuple(cpu(s) for s in carry.state)},
        "stats": stats.state_dict(),
        "best_success_rate": best_success_rate,
        "rng": get_rng_state(),
        "actions": action_log[0] if action_log else None,
        "reward_scale": reward_scale.state_dict() if reward_scale is not None else None,
    }
    target = path(run_dir)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):  # a full disk, a folder gone read-only: stop with one line
            kept = (f"the previous checkpoint {target} is intact" if os.path.exists(target)
                    else "no earlier checkpoint was written")
            raise CheckpointError(f"could not write the checkpoint at step {global_step:,} "
                                  f"({err.strerror or type(err).__name__}); {kept}") from None
        raise
    return target


def load(location: str) -> dict[str, Any]:
    """Load a checkpoint file or run folder; raises CheckpointError with a one-line reason."""
    file = resolve(location)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise CheckpointError(f"{file} is not a readable urlstm checkpoint (torch.load failed: "
                              f"{type(err).__name__}{': ' + reason if reason else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a urlstm PPO checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{file} has checkpoint version {data.get('version')}, expected {VERSION}")
    missing = [k for k in ("config", "model", "optimizer", "global_step", "update", "carry", "rng")
               if k not in data]
    if missing:
        raise CheckpointError(f"{file} is incomplete: missing {missing}")
    data["path"] = file
    return data


# ---------------------------------------------------------------------------------------------
# environments on resume
# ---------------------------------------------------------------------------------------------

def restore_envs(data: dict, venv, policy, seed: int, device: torch.device,
                 action_log: list[torch.Tensor]) -> Carry:
    """Bring ``venv`` back to where the checkpoint stopped and return the carry to continue with.

    With a recorded action log the envs are reset with the run's ``seed`` and the actions replayed
    (exact resume); otherwise they are re-seeded with ``seed + global_step`` and the memory starts
    empty.
    """
    actions = data.get("actions")
    if actions is None:
        return initial_carry(policy, venv, seed + data["global_step"], device)
    venv.reset(seed=seed)
    space = venv.single_action_space
    dtype = policy.head.action_dtype()
    obs = None
    for a in actions.to(dtype).unbind(0):
        obs, *_ = venv.step(env_actions(space, a))
    action_log.append(actions)
    c = data["carry"]
    saved_obs = tree_map(lambda x: x.to(device), c["obs"])
    if obs is not None:
        replayed = obs_to_tensor(policy.observation_space, obs, device)
        same = tree_map(lambda a, b: bool(torch.equal(a, b)), replayed, saved_obs)
        flat = same.values() if isinstance(same, dict) else (same if isinstance(same, tuple) else [same])
        if not all(flat):
            raise CheckpointError("replaying the recorded actions did not reproduce the saved "
                                  "observations (is the environment deterministic?); resume with "
                                  "a run made with --no-exact-resume")
    return Carry(obs=saved_obs, reset=c["reset"].to(device), prev_action=c["prev_action"].to(device),
                 prev_reward=c["prev_reward"].to(device), state=tuple(s.to(device) for s in c["state"]))
