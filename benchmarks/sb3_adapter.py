"""Train sb3-contrib RecurrentPPO with any urlstm memory core, evaluate it, print one JSON line.

    python benchmarks/sb3_adapter.py --core urlstm --env urlstm/TMazePassive-v0 --length 10
    python benchmarks/sb3_adapter.py --core stock ...   # sb3-contrib's own MlpLstmPolicy

`--core` takes every spec of `policies.cores.CORE_SPECS` ("urlstm", "lstm", "gru", "urgru", "mlp",
"lstm:CR", ...) or "stock". The policy is picked from the observation space (MLP, CNN or
MultiInput), exactly as one would pick MlpLstmPolicy / CnnLstmPolicy / MultiInputLstmPolicy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from policies.cores import CORE_SPECS  # noqa: E402
from policies.sb3 import URLSTMCnnPolicy, URLSTMMultiInputPolicy, URLSTMPolicy  # noqa: E402

try:  # registers the project's tasks (urlstm/TMazePassive-v0, ...) with Gymnasium
    import envs  # noqa: F401
except ImportError:  # pragma: no cover - the environments package is optional here
    pass

STOCK = {"mlp": "MlpLstmPolicy", "cnn": "CnnLstmPolicy", "dict": "MultiInputLstmPolicy"}
OURS = {"mlp": URLSTMPolicy, "cnn": URLSTMCnnPolicy, "dict": URLSTMMultiInputPolicy}


def make_env(env_id: str, n_envs: int, seed: int, length: int | None = None) -> VecEnv:
    """`n_envs` copies of a Gymnasium id (with `length=` when given) in an sb3 DummyVecEnv."""
    env_kwargs = {"length": length} if length is not None else None
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


def pick_policy(core: str, observation_space: spaces.Space) -> Any:
    """Our policy class (or stock's alias for core="stock") for this observation space."""
    if isinstance(observation_space, spaces.Dict):
        kind = "dict"
    elif is_image_space(observation_space):
        kind = "cnn"
    else:
        kind = "mlp"
    return STOCK[kind] if core == "stock" else OURS[kind]


def build_model(
    core: str, env_id: str, length: int | None, seed: int, n_envs: int, hidden_size: int, **ppo: Any
) -> RecurrentPPO:
    """RecurrentPPO with `core` (or "stock") on `n_envs` copies of `env_id`; `ppo` overrides."""
    torch.set_num_threads(1)
    env = make_env(env_id, n_envs, seed, length)
    policy_kwargs: dict[str, Any] = {"lstm_hidden_size": hidden_size}
    if core != "stock":
        policy_kwargs["core"] = core
    # Tuned on the passive T-maze (length 10), the same for every core: a high entropy bonus keeps
    # the junction turn exploring while the corridor penalty is learnt, and target_kl stops the
    # rare epochs whose update jumps (seen as collapses to a never-turning policy, stock and ours).
    hyper = dict(
        n_steps=128, batch_size=256, n_epochs=4, learning_rate=3e-4, ent_coef=0.1, target_kl=0.03
    )
    hyper.update(ppo)
    return RecurrentPPO(
        pick_policy(core, env.observation_space),
        env,
        seed=seed,
        device="cpu",
        policy_kwargs=policy_kwargs,
        **hyper,
    )


def train_and_evaluate(
    core: str = "urlstm",
    env_id: str = "urlstm/TMazePassive-v0",
    length: int | None = 10,
    seed: int = 0,
    total_timesteps: int = 150_000,
    n_envs: int = 8,
    hidden_size: int = 64,
    eval_episodes: int = 100,
    **ppo: Any,
) -> dict[str, Any]:
    """Train RecurrentPPO with `core` (or "stock") and evaluate it deterministically.

    Returns:
        dict with the run's arguments, `mean_return`, `success_rate` (fraction of evaluation
        episodes whose final info says `success`/`is_success`; None if the env reports neither),
        `train_seconds` and `sps` (training env-steps per second).
    """
    model = build_model(core, env_id, length, seed, n_envs, hidden_size, **ppo)
    start = time.perf_counter()
    model.learn(total_timesteps)
    seconds = time.perf_counter() - start

    eval_env = make_env(env_id, 1, seed + 10_000, length)
    successes: list[float] = []

    def record(local: dict[str, Any], _: dict[str, Any]) -> None:
        if local["done"]:
            info = local["info"]
            flag = info.get("success", info.get("is_success"))
            if flag is not None:
                successes.append(float(flag))

    returns, _ = evaluate_policy(
        model,
        eval_env,
        n_eval_episodes=eval_episodes,
        deterministic=True,
        return_episode_rewards=True,
        callback=record,
    )
    hyper = {
        k: getattr(model, k) for k in ("n_steps", "batch_size", "n_epochs", "ent_coef", "target_kl")
    }
    return {
        "core": core,
        "env": env_id,
        "length": length,
        "seed": seed,
        "total_timesteps": total_timesteps,
        "n_envs": n_envs,
        "hidden_size": hidden_size,
        "learning_rate": model.learning_rate,
        **hyper,
        "mean_return": float(np.mean(returns)),
        "success_rate": float(np.mean(successes)) if successes else None,
        "train_seconds": round(seconds, 1),
        "sps": round(model.num_timesteps / seconds),
    }


def first_update(
    core: str = "lstm",
    env_id: str = "urlstm/TMazePassive-v0",
    length: int | None = 10,
    seed: int = 0,
    n_envs: int = 8,
    hidden_size: int = 64,
    **ppo: Any,
) -> dict[str, Any]:
    """Stock MlpLstmPolicy vs `core` from the same seed through one rollout and one PPO update.

    Returns:
        dict with `same_initial_weights` (bitwise), each side's logged losses and the largest
        absolute parameter difference after the update.
    """
    runs = {}
    for name in ("stock", core):
        model = build_model(name, env_id, length, seed, n_envs, hidden_size, **ppo)
        initial = {k: v.clone() for k, v in model.policy.state_dict().items()}
        model.learn(model.n_steps * n_envs)  # one rollout, one update
        logged = {
            k: float(v) for k, v in model.logger.name_to_value.items() if "loss" in k or "kl" in k
        }
        runs[name] = (initial, logged, model.policy.state_dict())
    (init_a, log_a, after_a), (init_b, log_b, after_b) = runs["stock"], runs[core]
    same_keys = init_a.keys() == init_b.keys()
    return {
        "core": core,
        "env": env_id,
        "length": length,
        "seed": seed,
        "n_envs": n_envs,
        "same_initial_weights": same_keys
        and all(torch.equal(init_a[k], init_b[k]) for k in init_a),
        "stock": log_a,
        core: log_b,
        "max_abs_param_diff": max((after_a[k] - after_b[k]).abs().max().item() for k in after_a)
        if same_keys
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--core", default="urlstm", help="a core spec, or 'stock' for MlpLstmPolicy"
    )
    parser.add_argument("--env", default="urlstm/TMazePassive-v0", help="Gymnasium id")
    parser.add_argument("--length", type=int, default=10, help="env kwarg `length` (0: not passed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-timesteps", type=int, default=150_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument(
        "--first-update",
        action="store_true",
        help="instead of training: compare one update of stock MlpLstmPolicy and --core",
    )
    args = parser.parse_args(argv)
    if args.core != "stock" and args.core not in CORE_SPECS:
        print(
            f"error: unknown core {args.core!r}; valid: stock, {', '.join(CORE_SPECS)}",
            file=sys.stderr,
        )
        return 2
    try:
        gym.spec(args.env)
    except gym.error.Error as err:
        print(f"error: unknown env {args.env!r} ({err})", file=sys.stderr)
        return 2
    if args.first_update:
        result = first_update(
            args.core, args.env, args.length or None, args.seed, args.n_envs, args.hidden_size
        )
        print(json.dumps(result))
        return 0
    result = train_and_evaluate(
        args.core,
        args.env,
        args.length or None,
        args.seed,
        args.total_timesteps,
        args.n_envs,
        args.hidden_size,
        args.eval_episodes,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
