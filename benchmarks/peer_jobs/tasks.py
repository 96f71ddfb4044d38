"""The benchmark tasks as the peers see them, and the command line every peer job shares.

Each peer job runs in its own interpreter (the project's, or a peer's virtual environment), so this
module imports only gymnasium, numpy and the task packages (minigrid, popgym), which every one of
those environments has. MiniGrid-MemoryS7-v0 is the 7x7x3 view flattened to 147 uint8 numbers,
computed with this project's numpy view (``envs/minigrid_view.py``, loaded by file path so that the
project's package, which needs gymnasium >= 1.0, is not imported); popgym-RepeatPreviousMedium-v0
is its Discrete(4) observation as a one-hot vector (gymnasium's ``FlattenObservation``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("MiniGrid-MemoryS7-v0", "popgym-RepeatPreviousMedium-v0")


def _fast_view() -> type:
    spec = importlib.util.spec_from_file_location("minigrid_view", ROOT / "envs" / "minigrid_view.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FastView


def make_env(task: str) -> gym.Env:
    """One env of ``task`` with a flat Box observation (obs [147] uint8 or [4] one-hot)."""
    if task.startswith("MiniGrid-"):
        import minigrid  # noqa: F401  (registers the ids)
        from minigrid.wrappers import ImgObsWrapper

        return gym.wrappers.FlattenObservation(ImgObsWrapper(_fast_view()(gym.make(task))))
    if task.startswith("popgym-"):
        import popgym  # noqa: F401  (registers the ids)

        return gym.wrappers.FlattenObservation(gym.make(task))
    raise ValueError(f"unknown task {task!r}")


def parse_args(description: str) -> argparse.Namespace:
    """The flags ``benchmarks/peers.py`` passes to every peer job."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--steps", type=int, required=True, help="env steps, all envs together")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--rollout", type=int, default=128, help="steps per env per update = BPTT length")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", required=True, help="scratch folder (logs, checkpoints)")
    p.add_argument("--out", required=True, help="where the job writes its result (JSON)")
    return p.parse_args()


def write_result(path: str, env_steps: int, loop_s: float, settings: dict[str, Any],
                 **extra: Any) -> None:
    """The job's own report: steps done, seconds in the training loop, versions, settings."""
    import numpy as np
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "gymnasium": gym.__version__}
    result = {"env_steps": int(env_steps), "loop_s": round(loop_s, 3),
              "torch_threads": torch.get_num_threads(),
              "versions": versions, "settings": settings, **extra}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit("a helper module of benchmarks/peers.py")
