"""Sample Factory's APPO with its LSTM core, on one task, on the CPU.

Run by ``benchmarks/peers.py`` with the Python of ``.peers/sample-factory``. Sample
Factory's own parallel runner: one rollout-worker process per core (``--num_workers``), each
stepping its share of the ``num_envs`` envs in two alternating halves (``--worker_num_splits 2``,
its default double buffering), an inference worker and a learner; asynchronous, as APPO is. The
model: its MLP encoder (one layer of width ``hidden``), ``nn.LSTM`` of width ``hidden``
(``--rnn_type lstm``), linear heads. Rollouts of ``rollout`` steps, trained as whole sequences
(``--recurrence`` = ``rollout``), ``epochs`` passes of ``minibatches`` minibatches over each
``num_envs`` x ``rollout`` steps. Steps done are read from the last checkpoint's name.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tasks import make_env, parse_args, write_result


def sf_make_env(full_env_name, cfg=None, env_config=None, render_mode=None):
    return make_env(full_env_name)


def main() -> None:
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.envs.env_utils import register_env
    from sample_factory.train import run_rl

    args = parse_args(__doc__)
    workers = max(1, min(os.cpu_count() or 1, args.num_envs // 2))
    while args.num_envs % (2 * workers):
        workers -= 1
    batch = args.num_envs * args.rollout
    argv = [
        "--algo=APPO", f"--env={args.task}", f"--experiment=sf_{args.seed}",
        f"--train_dir={args.workdir}", f"--seed={args.seed}", "--device=cpu",
        f"--num_workers={workers}", f"--num_envs_per_worker={args.num_envs // workers}",
        "--worker_num_splits=2",
        f"--rollout={args.rollout}", f"--recurrence={args.rollout}",
        f"--batch_size={batch // args.minibatches}", f"--num_batches_per_epoch={args.minibatches}",
        f"--num_epochs={args.epochs}",
        "--use_rnn=True", "--rnn_type=lstm", f"--rnn_size={args.hidden}",
        f"--encoder_mlp_layers={args.hidden}",
        "--learning_rate=2.5e-4", "--gamma=0.99", "--gae_lambda=0.95",
        f"--train_for_env_steps={args.steps}",
        "--save_every_sec=100000", "--save_best_every_sec=100000", "--keep_checkpoints=1",
        "--experiment_summaries_interval=100000", "--with_wandb=False",
        "--decorrelate_envs_on_one_worker=False",
    ]
    register_env(args.task, sf_make_env)
    parser, _ = parse_sf_args(argv=argv)
    cfg = parse_full_cfg(parser, argv)
    t0 = time.perf_counter()
    status = run_rl(cfg)  # its processes' start and end included
    loop_s = time.perf_counter() - t0
    names = glob.glob(os.path.join(args.workdir, f"sf_{args.seed}", "checkpoint_p0", "checkpoint_*.pth"))
    steps = max((int(re.search(r"_(\d+)\.pth$", n).group(1)) for n in names), default=0)
    settings = {"vectorization": f"{workers} rollout-worker processes x {args.num_envs // workers} "
                                 "envs in 2 splits, an inference worker, a learner",
                "minibatch_steps": batch // args.minibatches,
                "gradient_steps_per_update": args.epochs * args.minibatches,
                "policy": f"MLP encoder [{args.hidden}] -> nn.LSTM -> linear heads",
                "argv": argv, "status": int(status)}
    write_result(args.out, steps, loop_s, settings, peer_version=importlib.metadata.version("sample-factory"))


if __name__ == "__main__":
    main()
