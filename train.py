"""Train a recurrent agent on a memory task, evaluate a checkpoint, or compare memory cores.

    python train.py [flags]                       # train (defaults: UR-LSTM on the passive T-maze)
    python train.py eval --checkpoint RUN_OR_FILE [--episodes N] [--video out.gif]
    python train.py compare --cores lstm,urlstm --seeds 3 --sweep length=50,100 --out runs/NAME [train flags]
    python train.py report runs/NAME              # report.md + report.png of a folder of runs
    python train.py presets [--env ID]            # the presets of tuned settings per environment

This is the only module that parses flags: they are generated from ``agents.config.TrainConfig``,
whose field docstrings are the help text. Bad input prints one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import dataclasses
import inspect
import json
import os
import random
import shlex
import sys
import textwrap
import time
import typing
from typing import Any, Sequence

from agents.config import RESUMABLE_OVERRIDES, ConfigError, TrainConfig


# --algo impala without --num-envs / --total-steps: one gradient step per batch wants small batches
# and, for as many updates as PPO makes, more env steps (2M solve the default T-maze)
IMPALA_ENVS_PER_ACTOR = 4
IMPALA_TOTAL_STEPS = 2_000_000


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# flags from the dataclass
# ---------------------------------------------------------------------------------------------

def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal written under it."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """["length=100", "name=abc"] -> {"length": 100, "name": "abc"} (values as Python literals)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--env-kwargs takes key=value pairs, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per dataclass field; defaults are SUPPRESSed so that explicit flags can be told apart."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        shown = " ".join(f"{k}={v!r}" for k, v in default.items()) if isinstance(default, dict) else default
        help_text = f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(base) is dict or base is dict:
            parser.add_argument(flag, nargs="*", metavar="KEY=VALUE", **common)
        else:
            parser.add_argument(flag, type=_optional(base) if optional else base,
                                metavar=base.__name__.upper(), **common)


def parse_train(argv: Sequence[str]) -> tuple[TrainConfig, set[str]]:
    """Flags -> (config, names of the fields given explicitly)."""
    cfg, explicit, _ = parse_train_preset(argv)
    return cfg, explicit


def parse_train_preset(argv: Sequence[str]) -> tuple[TrainConfig, set[str], dict[str, Any]]:
    """Flags -> (config, names of the fields given explicitly, the settings the preset supplied)."""
    parser = _Parser(prog="train.py", description="Train a recurrent PPO agent on a memory task. "
                     "Naming --env applies its preset of tuned settings (agents/presets.toml), under "
                     "the flags given here. Subcommands: 'train.py eval --checkpoint PATH' evaluates "
                     "a trained agent, 'train.py presets' lists the presets, 'train.py compare' and "
                     "'train.py report' compare memory cores.")
    add_config_flags(parser)
    given = vars(parser.parse_args(list(argv)))
    explicit = set(given)
    if "env_kwargs" in given:
        given["env_kwargs"] = parse_kwargs(given["env_kwargs"])
    supplied: dict[str, Any] = {}
    if "resume" not in given:  # a resumed run keeps its saved settings
        supplied = apply_preset(given)
        if "env_kwargs" not in given and given.get("env", TrainConfig.env) != TrainConfig.env:
            given["env_kwargs"] = {}  # the default kwargs (length=50) belong to the default env
    if given.get("algo") == "impala" and "resume" not in given:  # small batches, more steps
        given.setdefault("num_envs", IMPALA_ENVS_PER_ACTOR * given.get("num_actors", TrainConfig.num_actors))
        given.setdefault("total_steps", IMPALA_TOTAL_STEPS)
    return TrainConfig(**given), explicit, supplied


def apply_preset(given: dict[str, Any]) -> dict[str, Any]:
    """Fill ``given`` (parsed flags) from its --preset (auto: the one for --env and --algo) where no
    flag was given; env kwargs merge key by key. Returns the settings the preset supplied."""
    from agents import presets

    env, algo = given.get("env", TrainConfig.env), given.get("algo", TrainConfig.algo)
    choice = given.get("preset", TrainConfig.preset)
    given["preset"] = "none"
    if choice == "none":
        return {}
    try:
        preset = presets.find(env, algo) if choice == "auto" else presets.by_name(choice)
        if preset is None:
            return {}
        if preset.algo != algo:
            raise UsageError(f"preset {preset.name} is for --algo {preset.algo}, not {algo}: pick "
                             "another with --preset (python train.py presets lists them)")
        settings = presets.resolve(preset, env, given.get("env_kwargs", {}))
    except presets.PresetError as err:
        raise UsageError(_one_line(err)) from None
    supplied: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "env_kwargs" and given.get(key) == {}:  # --env-kwargs with nothing after it: none
            continue
        if key == "env_kwargs":
            added = {k: v for k, v in value.items() if k not in given.get("env_kwargs", {})}
            if added:
                supplied[key] = added
            given[key] = value
        elif key not in given:
            given[key] = supplied[key] = value
    given["preset"] = preset.name
    return supplied


def preset_line(cfg: TrainConfig, supplied: dict[str, Any]) -> str:
    """The first line of a run: which preset, and which flags came from it."""
    from agents.presets import as_flags

    if cfg.preset == "none":
        return "preset: none (every setting from the flags and the defaults)"
    if not supplied:
        return f"preset {cfg.preset}: every one of its settings was given as a flag"
    return (f"preset {cfg.preset} ({cfg.algo} on {cfg.env}; flags override it, --preset none drops "
            f"it): {as_flags(supplied)}")


def parse_eval(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="train.py eval", description="Evaluate a checkpoint: play whole episodes "
                     "with the recurrent state carried across steps; report success and return.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to play (default: 100)")
    parser.add_argument("--video", default=None, metavar="OUT.gif", help="also save one episode as a GIF")
    parser.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=True,
                        help="take the most likely action (default); --no-greedy samples from the policy")
    parser.add_argument("--seed", type=int, default=None, help="env seed (default: training seed + 10000)")
    parser.add_argument("--num-envs", type=int, default=None,
                        help="envs in parallel (default: one per episode, as many as fit in memory)")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="the step guard: stop with an error when an episode runs longer "
                             "(default: 100000)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(list(argv))
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    if args.num_envs is not None and args.num_envs < 1:
        raise UsageError(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UsageError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    return args


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_env(cfg: TrainConfig, num_envs: int | None = None, seed: int | None = None):
    """envs.make with the config's id and kwargs; bad ids or kwargs raise UsageError."""
    import envs

    try:
        return envs.make(cfg.env, num_envs or cfg.num_envs, cfg.seed if seed is None else seed, **cfg.env_kwargs)
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(_one_line(err)) from None
    except Exception as err:  # gymnasium.error.Error and friends from third-party ids
        if type(err).__module__.startswith("gymnasium"):
            raise UsageError(f"cannot make env {cfg.env!r}: {_one_line(err)}") from None
        raise


def make_policy(cfg: TrainConfig, venv, device):
    from policies.actor_critic import ActorCritic

    try:
        policy = ActorCritic(venv.single_observation_space, venv.single_action_space, core=cfg.core,
                             hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, embed_size=cfg.embed_size,
                             prev_action_reward=cfg.prev_action_reward,
                             head_gain=cfg.policy_head_gain)
    except ValueError as err:
        raise UsageError(_one_line(err)) from None
    return policy.to(device)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

def run_train(argv: Sequence[str], stop=None) -> tuple[int, dict | None]:
    """Parse, build and train; returns (exit code, summary)."""
    import torch

    from agents import checkpoint as ckpt
    from agents import distributed, impala, ppo
    from agents.logger import git_commit, make_run_dir, write_json
    from agents.resources import check_training_memory, check_writable

    cfg, given, supplied = parse_train_preset(argv)
    distributed.init(cfg.device)  # under torchrun: join its process group (else nothing)
    resume = None
    if cfg.resume is not None:
        resume = distributed.on_rank0(ckpt.load, cfg.resume)  # every rank resumes from rank 0's
        saved = TrainConfig.from_dict(resume["config"])
        changed = sorted(k for k in given - {"resume"} if k not in RESUMABLE_OVERRIDES
                         and getattr(cfg, k) != getattr(saved, k))
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise UsageError(f"{flags} cannot change when resuming (allowed: "
                             f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES)})")
        overrides = {k: getattr(cfg, k) for k in given if k in RESUMABLE_OVERRIDES}
        cfg = dataclasses.replace(saved, **overrides, resume=cfg.resume)
        if resume["update"] >= cfg.num_updates:
            raise UsageError(f"the run already did {resume['global_step']} steps: raise --total-steps to "
                             "continue it")
    device = distributed.device(resolve_device(cfg.device))
    distributed.check(cfg)
    if distributed.is_main():  # before any time is spent: can the run folder be written?
        check_writable(os.path.dirname(os.path.abspath(resume["path"])) if resume is not None else cfg.logdir)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    local = distributed.local_config(cfg)  # this rank's envs and seed (all of them without torchrun)
    seed_everything(local.seed)
    venv = make_env(cfg, num_envs=1 if cfg.algo == "impala" else local.num_envs,  # IMPALA's actors
                    seed=local.seed)                                              # make their own
    policy = make_policy(cfg, venv, device)
    try:  # before any time is spent: does the run fit in memory, can the evaluations run?
        check_training_memory(cfg, policy, device)
        if cfg.eval_episodes or cfg.eval_every:
            from agents.evaluate import check_episode_limit, eval_envs
            check_episode_limit(venv, cfg.env, remedy="skip the evaluations: --eval-episodes 0")
            eval_envs(policy, device, max(cfg.eval_episodes, 1))
    except BaseException:
        venv.close()
        raise
    if resume is not None:
        run_dir = os.path.dirname(os.path.abspath(resume["path"]))
    else:
        run_dir = distributed.on_rank0(make_run_dir, cfg.logdir, cfg.env, cfg.core, cfg.seed,
                                       cfg.run_name)
    meta = {**cfg.to_dict(), "preset_settings": supplied, "world_size": distributed.world_size(),
            "git_commit": git_commit(), "device_resolved": str(device),
            "torch": torch.__version__, "torch_threads_resolved": torch.get_num_threads(),
            "params": sum(p.numel() for p in policy.parameters()),
            "command": "python train.py " + " ".join(argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if distributed.is_main():  # under torchrun rank 0 alone writes and prints
        write_json(os.path.join(run_dir, "config.json" if resume is None else "config_resumed.json"),
                   meta)
    if cfg.resume is None and distributed.is_main():  # the run's first line
        print(preset_line(cfg, supplied), file=sys.stderr, flush=True)
    if cfg.progress and distributed.is_main():
        print(f"training {cfg.core} on {cfg.env} {cfg.env_kwargs or ''} for {cfg.num_updates * cfg.batch_size:,} "
              f"steps on {device}; run folder {run_dir}", file=sys.stderr)
    try:
        learner = impala.train if cfg.algo == "impala" else ppo.train
        summary = learner(cfg, venv, policy, run_dir, device, resume=resume, stop=stop)
    finally:
        venv.close()
    if distributed.is_main():
        print(report(summary))
    return (1 if summary["status"].startswith(("diverged", "failed")) else 0), summary


def report(s: dict) -> str:
    minutes, seconds = divmod(int(round(s["wall_time_s"])), 60)
    lines = []
    if s["status"].startswith("diverged"):
        lines.append(f"error: training stopped at step {s['total_steps']:,}: {s['status'][len('diverged: '):]}")
        lines.append(f"  last good checkpoint: {s['checkpoint']}")
    else:
        lines.append(f"{s['status']}: {s['total_steps']:,} steps in {minutes}m{seconds:02d}s ({s['sps']:,.0f} SPS)")

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"
    lines.append(f"  training, last 100 episodes: return {fmt(s['train_return'])}, "
                 f"success {fmt(s['train_success_rate'])}")
    if s["final_eval_episodes"]:
        lines.append(f"  evaluation, {s['final_eval_episodes']} episodes: return {fmt(s['final_return'])}, "
                     f"success {fmt(s['final_success_rate'])}")
    lines.append(f"  best success rate: {fmt(s['best_success_rate'])}")
    lines.append(f"logs:       tensorboard --logdir {s['run_dir']}")
    lines.append(f"summary:    {os.path.join(s['run_dir'], 'summary.json')}")
    if not s["status"].startswith("diverged"):
        # under torchrun a resumed run is launched the same way (rank 0 reads the checkpoint)
        launch = "torchrun <the same options> train.py" if os.environ.get("WORLD_SIZE", "1") != "1" else "python train.py"
        lines.append(f"checkpoint: {s['checkpoint']}   (continue: {launch} --resume {s['run_dir']} "
                     "--total-steps N; evaluate: python train.py eval --checkpoint ...)")
    return "\n".join(lines)


def run_eval(argv: Sequence[str]) -> int:
    from agents import checkpoint as ckpt
    from agents.evaluate import evaluate, record_gif

    args = parse_eval(argv)
    data = ckpt.load(args.checkpoint)
    cfg = TrainConfig.from_dict({**data["config"], "resume": None})
    device = resolve_device(args.device)
    if cfg.torch_threads:  # the run's setting (one thread: these small batches are fastest so)
        import torch

        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed if args.seed is None else args.seed)
    probe = make_env(cfg, num_envs=1)
    policy = make_policy(cfg, probe, device)
    probe.close()
    try:
        policy.load_state_dict({k: v.to(device) for k, v in data["model"].items()})
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"checkpoint weights do not fit its own config: {_one_line(err)[:200]}")
    policy.eval()
    result = evaluate(policy, cfg, device, episodes=args.episodes, greedy=args.greedy, seed=args.seed,
                      num_envs=args.num_envs, max_episode_steps=args.max_episode_steps,
                      note=lambda text: print(f"note: {text}", file=sys.stderr))
    result.update(checkpoint=data["path"], env=cfg.env, core=cfg.core, global_step=data["global_step"])
    if args.video:
        try:
            result["video"] = record_gif(policy, cfg, device, args.video, greedy=args.greedy, seed=args.seed)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    if args.json:
        print(json.dumps(result))
    else:
        succ = "n/a" if result["success_rate"] is None else f"{result['success_rate']:.3f}"
        print(f"{cfg.core} on {cfg.env} after {data['global_step']:,} steps: success {succ}, return "
              f"{result['return_mean']:.3f} +- {result['return_std']:.3f} over {result['episodes']} episodes "
              f"({'greedy' if args.greedy else 'sampled'} actions)")
        if args.video:
            v = result["video"]
            print(f"GIF: {v['file']} ({v['frames']} frames, return {v['return']:.3f})")
    return 0


def parse_compare(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Compare flags, and the train flags passed to every run (after ``--`` or unknown here)."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = _Parser(prog="train.py compare", allow_abbrev=False, description="Train every (core, sweep "
                     "value, seed) as its own run under --out, at most --jobs at a time; rerun the same "
                     "command to continue a stopped sweep. Other flags (or all flags after --) go to every "
                     "run; {expression} in them is evaluated with the sweep variable, e.g. "
                     "--num-steps '{length + 1}'. Writes report.md and report.png at the end.")
    parser.add_argument("--env", default=TrainConfig.env, help=f"environment id (default: {TrainConfig.env})")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fixed env keyword arguments of every run")
    parser.add_argument("--cores", default="lstm,gru,urlstm,urgru,mlp",
                        help="comma-separated cores (default: lstm,gru,urlstm,urgru,mlp)")
    parser.add_argument("--seeds", default="3", help="number of seeds N (seeds 1..N) or a list such as "
                        "1,2,5 (default: 3)")
    parser.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                        help="an env keyword and its values, e.g. length=50,100,250")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1; each run uses "
                        "--torch-threads threads, 1 by default)")
    parser.add_argument("--out", required=True, help="sweep folder (created; reused to continue)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over the runs (default: on)")
    args, unknown = parser.parse_known_args(own)
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds takes a count or a comma-separated list of integers, got {args.seeds!r}")
    args.seeds = list(range(1, seeds[0] + 1)) if len(seeds) == 1 else seeds
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds must give at least one seed and no repeats, got {args.seeds!r}")
    args.cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    args.env_kwargs = parse_kwargs(args.env_kwargs)
    return args, unknown + extra


def run_compare(argv: Sequence[str]) -> int:
    from agents import sweep

    args, extra = parse_compare(argv)

    def check(train_argv: Sequence[str]) -> None:
        try:
            parse_train(train_argv)
        except UsageError as err:
            raise ValueError(str(err)) from None

    try:
        result = sweep.compare(args.env, args.cores, args.seeds, args.sweep, args.env_kwargs, extra, args.out,
                               jobs=args.jobs, progress=args.progress, check=check,
                               command="python train.py compare " + " ".join(map(shlex.quote, argv)))
    except sweep.SweepError as err:
        raise UsageError(_one_line(err)) from None
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to continue the sweep in {args.out}", file=sys.stderr)
        return 130
    print(f"{result['done']}/{result['runs']} runs done in {args.out}")
    if result["failed"]:
        print(f"failed: {', '.join(result['failed'])} (logs: {args.out}/<name>.log; rerun the command to "
              "redo them)")
    if result["report"]:
        print(f"report: {result['report']} and {os.path.join(args.out, 'report.png')}")
    print(f"logs:   tensorboard --logdir {args.out}")
    return 1 if result["failed"] else 0


def run_report(argv: Sequence[str]) -> int:
    from agents import report

    parser = _Parser(prog="train.py report", description="Aggregate a folder of runs (train.py compare) into "
                     "report.md, report.png/pdf and report.json.")
    parser.add_argument("folder", help="the sweep folder (holding run folders)")
    parser.add_argument("--key", default=None, help="the swept env keyword (default: from sweep.json, or "
                        "the one env keyword that differs across runs)")
    args = parser.parse_args(list(argv))
    try:
        md = report.write(args.folder, args.key)
    except FileNotFoundError as err:
        raise UsageError(_one_line(err)) from None
    print(open(md).read(), end="")
    print(f"written: {md}, {os.path.join(args.folder, 'report.png')}")
    return 0


def run_presets(argv: Sequence[str]) -> int:
    from agents import presets

    parser = _Parser(prog="train.py presets", description="List the presets of tuned settings: what "
                     "each matches, for which --algo, its settings as flags and what was measured with "
                     "it. With --env: the preset that a run on that id would use, and its settings.")
    parser.add_argument("--env", default=None, help="show the preset for this environment id")
    parser.add_argument("--algo", default="ppo", choices=presets.ALGOS, help="learner (default: ppo)")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="with --env: env keyword arguments to evaluate the settings with")
    args = parser.parse_args(list(argv))
    try:
        if args.env is None:
            print(presets.describe(), end="")
            return 0
        preset = presets.find(args.env, args.algo)
        if preset is None:
            print(f"no preset for {args.env} with --algo {args.algo}")
            return 0
        settings = presets.resolve(preset, args.env, parse_kwargs(args.env_kwargs))
    except presets.PresetError as err:
        raise UsageError(_one_line(err)) from None
    print(f"{preset.name} [{preset.algo}]: {presets.as_flags(settings)}")
    print(f"  evidence: {preset.evidence}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from agents.checkpoint import CheckpointError
    from agents.evaluate import EvaluationError
    from agents.resources import ResourceError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["eval"]:
            return run_eval(argv[1:])
        if argv[:1] == ["compare"]:
            return run_compare(argv[1:])
        if argv[:1] == ["report"]:
            return run_report(argv[1:])
        if argv[:1] == ["presets"]:
            return run_presets(argv[1:])
        if argv[:1] == ["train"]:
            argv = argv[1:]
        return run_train(argv)[0]
    except (UsageError, ConfigError, CheckpointError, EvaluationError, ResourceError) as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
            print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if "agents.distributed" in sys.modules:
            sys.modules["agents.distributed"].shutdown()


def _leave(code: list[int]) -> None:
    """The last exit handler (registered first, run last): after every other handler has closed
    what it owns, flush the standard streams and end the process without tearing down the
    interpreter's objects, which takes about a second once torch is imported and frees nothing
    the operating system would not."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code[0])


if __name__ == "__main__":
    exit_code = [1]  # an uncaught exception's code, unless main returns
    atexit.register(_leave, exit_code)
    exit_code[0] = main()
    sys.exit(exit_code[0])
