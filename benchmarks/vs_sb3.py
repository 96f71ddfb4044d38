"""Training speed of this PPO against sb3-contrib's RecurrentPPO on MiniGrid-MemoryS7, same settings.

    python benchmarks/vs_sb3.py                 # 2 rounds each, alternating, 16 envs x 128 steps
    python benchmarks/vs_sb3.py --rounds 3 --updates 8 --vectorization async

Both learners get the same number of envs (16), rollout length (128), LSTM width (128), epochs (4),
minibatches (4 of 512 steps) and torch threads, and the same kind of env vectorization (in-process
``sync``: gymnasium SyncVectorEnv / sb3 DummyVecEnv; or ``async``: worker processes, gymnasium
AsyncVectorEnv / sb3 SubprocVecEnv) and the same MiniGrid view code (``--minigrid-view numpy``: this
package's ``envs/minigrid_view.py`` for both, the default; ``minigrid``: MiniGrid's own, about 3x
slower per step, for both). They run alternately, each round after a warm-up update that is
not timed; prints one JSON object with both SPS and their ratio.

sb3-contrib sees the 7x7x3 view flattened to 147 numbers (MlpLstmPolicy: its CNN extractor needs
36x36 images); this package's actor-critic sees the image and the direction (Dict observation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from agents.config import TrainConfig  # noqa: E402
from benchmarks.train_speed import measure  # noqa: E402
from policies.cores.cpu import cpu_info  # noqa: E402

ENV = "MiniGrid-MemoryS7-v0"


def sb3_env(num_envs: int, seed: int, vectorization: str, fast_view: bool):
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the ids)
    from minigrid.wrappers import ImgObsWrapper
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from envs.minigrid_view import FastView

    def make():
        env = gym.make(ENV)
        return gym.wrappers.FlattenObservation(ImgObsWrapper(FastView(env) if fast_view else env))

    cls = DummyVecEnv if vectorization == "sync" else SubprocVecEnv
    return make_vec_env(make, n_envs=num_envs, seed=seed, vec_env_cls=cls)


def measure_sb3(args, seed: int) -> dict:
    from sb3_contrib import RecurrentPPO

    env = sb3_env(args.num_envs, seed, args.vectorization, args.minigrid_view == "numpy")
    batch = args.num_envs * args.num_steps
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=args.num_steps, batch_size=batch // args.num_minibatches,
                         n_epochs=args.update_epochs, learning_rate=2.5e-4, ent_coef=0.01, seed=seed,
                         policy_kwargs={"lstm_hidden_size": args.hidden_size}, device="cpu", verbose=0)
    model.learn(total_timesteps=batch)  # warm-up, not timed
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.updates * batch, reset_num_timesteps=False)
    seconds = time.perf_counter() - t0
    steps = model.num_timesteps - batch
    env.close()
    return {"sps": round(steps / seconds, 1), "steps_measured": steps, "seconds_measured": round(seconds, 2)}


def measure_ours(args, seed: int) -> dict:
    kwargs = {"vectorization": args.vectorization, "fast_view": args.minigrid_view == "numpy"}
    cfg = TrainConfig(env=ENV, env_kwargs=kwargs, core=args.core, hidden_size=args.hidden_size,
                      num_envs=args.num_envs, num_steps=args.num_steps, seq_len=args.num_steps,
                      num_minibatches=args.num_minibatches, update_epochs=args.update_epochs,
                      learning_rate=2.5e-4, ent_coef=0.01, torch_threads=args.torch_threads, seed=seed,
                      device="cpu", progress=False)
    return measure(cfg, args.updates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--updates", type=int, default=6, help="timed updates per round (x 2048 steps)")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--update-epochs", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--core", default="lstm", help="this package's core (sb3 always uses nn.LSTM)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--vectorization", choices=("sync", "async"), default="sync")
    parser.add_argument("--minigrid-view", choices=("numpy", "minigrid"), default="numpy",
                        help="both learners' envs compute the agent's view with envs/minigrid_view.py "
                             "(numpy) or with MiniGrid's own code; the observations are identical")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    ours, sb3 = [], []
    for r in range(args.rounds):
        ours.append(measure_ours(args, seed=r))
        print(f"round {r}: ours {ours[-1]['sps']:.0f} SPS", file=sys.stderr, flush=True)
        sb3.append(measure_sb3(args, seed=r))
        print(f"round {r}: sb3-contrib {sb3[-1]['sps']:.0f} SPS", file=sys.stderr, flush=True)
    mean = lambda xs: sum(x["sps"] for x in xs) / len(xs)  # noqa: E731
    print(json.dumps({
        "benchmark": "vs_sb3", "env": ENV, "num_envs": args.num_envs, "num_steps": args.num_steps,
        "hidden_size": args.hidden_size, "update_epochs": args.update_epochs,
        "num_minibatches": args.num_minibatches, "torch_threads": torch.get_num_threads(),
        "vectorization": args.vectorization, "minigrid_view": args.minigrid_view, "core": args.core,
        "ours_sps": round(mean(ours), 1), "sb3_contrib_sps": round(mean(sb3), 1),
        "ratio": round(mean(ours) / mean(sb3), 2),
        "ours_rounds": ours, "sb3_contrib_rounds": sb3,
        "machine": {"cpu": cpu_info(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
