"""sb3-contrib's RecurrentPPO (``MlpLstmPolicy``) on one task, on the CPU.

Run by ``benchmarks/peers.py`` with the project's own Python (sb3-contrib is one of its
dependencies). Envs in one process (``DummyVecEnv``, as ``make_vec_env`` builds by default);
``n_steps`` = ``rollout``, ``n_epochs`` = ``epochs``, ``batch_size`` = the rollout's steps /
``minibatches``, LSTM width ``hidden`` (sb3-contrib feeds the flat observation straight into the
LSTM, then two layers of 64 for each of the policy and the value heads).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tasks import make_env, parse_args, write_result


def main() -> None:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    args = parse_args(__doc__)
    env = make_vec_env(lambda: make_env(args.task), n_envs=args.num_envs, seed=args.seed)
    batch = args.num_envs * args.rollout
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=args.rollout,
                         batch_size=batch // args.minibatches, n_epochs=args.epochs,
                         learning_rate=2.5e-4, ent_coef=0.01, seed=args.seed, device="cpu",
                         policy_kwargs={"lstm_hidden_size": args.hidden}, verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    loop_s = time.perf_counter() - t0
    model.save(os.path.join(args.workdir, "model.zip"))
    env.close()
    settings = {"vectorization": f"DummyVecEnv, {args.num_envs} envs in the learner's process",
                "minibatch_steps": batch // args.minibatches,
                "gradient_steps_per_update": args.epochs * args.minibatches,
                "policy": "MlpLstmPolicy: nn.LSTM on the flat observation, MLP heads [64, 64]"}
    write_result(args.out, model.num_timesteps, loop_s, settings,
                 peer_version=importlib.metadata.version("sb3-contrib"))


if __name__ == "__main__":
    main()
