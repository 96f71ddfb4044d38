"""PufferLib's PuffeRL with its LSTM policy wrapper and multiprocessing vectorisation, on one task.

Run by ``benchmarks/peers.py`` with the Python of ``.peers/pufferlib``. The envs are
Gymnasium envs behind ``pufferlib.emulation.GymnasiumPufferEnv``, stepped by
``pufferlib.vector.Multiprocessing`` (one worker process per core, PufferLib's rule, and all envs in
one synchronous batch, so that every update sees ``num_envs`` x ``rollout`` steps as the others do).
The policy is ``pufferlib.models.Default`` (Linear + GELU encoder, width ``hidden``) wrapped in
``pufferlib.models.LSTMWrapper`` (torch's LSTM, width ``hidden``). The loop is PuffeRL's own:
``evaluate()`` (a rollout) then ``train()`` until ``steps``, then ``close()`` (last checkpoint);
PufferLib's ``train()`` entry point would add 32 rollouts of evaluation after training, left out.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
import pufferlib.emulation
import pufferlib.models
import pufferlib.pufferl
import pufferlib.vector
from tasks import make_env, parse_args, write_result


def creator(task: str, buf=None, seed: int = 0) -> pufferlib.emulation.GymnasiumPufferEnv:
    return pufferlib.emulation.GymnasiumPufferEnv(env_creator=make_env, env_args=[task], buf=buf,
                                                  seed=seed)


def main() -> None:
    args = parse_args(__doc__)
    batch = args.num_envs * args.rollout
    workers = max(1, min(psutil.cpu_count(logical=False) or 1, args.num_envs))
    while args.num_envs % workers:
        workers -= 1
    vecenv = pufferlib.vector.make(functools.partial(creator, args.task), num_envs=args.num_envs,
                                   backend=pufferlib.vector.Multiprocessing, num_workers=workers,
                                   batch_size=args.num_envs, seed=args.seed)
    env = vecenv.driver_env
    policy = pufferlib.models.LSTMWrapper(
        env, pufferlib.models.Default(env, hidden_size=args.hidden),
        input_size=args.hidden, hidden_size=args.hidden)
    config = {
        "env": args.task, "seed": args.seed, "device": "cpu", "torch_deterministic": False,
        "cpu_offload": False, "compile": False, "compile_mode": "default", "compile_fullgraph": False,
        "precision": "float32", "use_rnn": True,
        "total_timesteps": args.steps, "batch_size": batch, "bptt_horizon": args.rollout,
        "minibatch_size": batch // args.minibatches, "max_minibatch_size": batch // args.minibatches,
        "update_epochs": args.epochs,
        "optimizer": "adam", "learning_rate": 2.5e-4, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_eps": 1e-8, "anneal_lr": True, "max_grad_norm": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.2, "vf_coef": 0.5, "vf_clip_coef": 0.2,
        "ent_coef": 0.01, "prio_alpha": 0.0, "prio_beta0": 1.0, "vtrace_rho_clip": 1.0,
        "vtrace_c_clip": 1.0,
        "checkpoint_interval": 10**9, "data_dir": args.workdir,
    }
    trainer = pufferlib.pufferl.PuffeRL(config, vecenv, policy)
    t0 = time.perf_counter()
    while trainer.global_step < args.steps:
        trainer.evaluate()
        trainer.train()
    loop_s = time.perf_counter() - t0
    trainer.close()
    settings = {"vectorization": f"pufferlib.vector.Multiprocessing, {workers} workers, "
                                 f"batch of {args.num_envs} envs",
                "minibatch_steps": config["minibatch_size"],
                "gradient_steps_per_update": args.epochs * args.minibatches,
                "policy": "Default (Linear+GELU) -> LSTMWrapper (nn.LSTM)",
                "pufferlib_C": pufferlib.pufferl._C_AVAILABLE}
    write_result(args.out, trainer.global_step, loop_s, settings,
                 peer_version=importlib.metadata.version("pufferlib-core"))


if __name__ == "__main__":
    main()
