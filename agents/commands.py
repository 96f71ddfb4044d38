"""What each ``train.py`` command does once its flags are parsed: train, eval, compare, report,
presets. The flags of the commands other than training are the frozen dataclasses below (their
field docstrings are the help text); ``train.py`` parses them with tyro and calls ``run_*``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Sequence

import tyro

from agents.config import ConfigError, Kwargs, OptInt, TrainConfig
from agents.runfolder import UsageError, one_line, resolve_device, seed_everything

# ---------------------------------------------------------------------------------------------
# building the env and the policy of a config
# ---------------------------------------------------------------------------------------------


def make_env(cfg: TrainConfig, num_envs: int | None = None, seed: int | None = None):
    """envs.make with the config's id and kwargs; bad ids or kwargs raise UsageError."""
    import envs

    try:
        return envs.make(cfg.env, num_envs or cfg.num_envs, cfg.seed if seed is None else seed,
                         **cfg.env_kwargs)
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(one_line(err)) from None
    except Exception as err:  # gymnasium.error.Error and friends from third-party ids
        if type(err).__module__.startswith("gymnasium"):
            raise UsageError(f"cannot make env {cfg.env!r}: {one_line(err)}") from None
        raise


def make_policy(cfg: TrainConfig, venv, device):
    """The config's actor-critic for the env's spaces, on ``device``; bad core options: UsageError."""
    from agents.actor import make_actor_policy

    try:
        policy = make_actor_policy(cfg, venv)
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    return policy.to(device)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def run_train(cfg: TrainConfig, resume: dict | None, preset_line: str, command: str,
              preset_settings: dict[str, Any], stop: Callable[[int], bool] | None = None
              ) -> tuple[int, dict]:
    """Build the env and the policy of ``cfg`` and train; returns (exit code, summary).

    Every check that can refuse the run (the run folder, the memory, the evaluations) comes before
    anything large is allocated or any time is spent.
    """
    import torch

    from agents import distributed, impala, ppo
    from agents.logger import git_commit, make_run_dir, write_json
    from agents.resources import check_training_memory, check_writable

    device = distributed.device(resolve_device(cfg.device))
    distributed.check(cfg)
    run_parent = os.path.dirname(os.path.abspath(resume["path"])) if resume else cfg.logdir
    if distributed.is_main():
        check_writable(run_parent)
    torch_settings(cfg, device)
    local = distributed.local_config(cfg)  # this rank's envs and seed (all of them without torchrun)
    seed_everything(local.seed)
    # IMPALA's actors make their own envs: here one env gives the spaces
    venv = make_env(cfg, num_envs=1 if cfg.algo == "impala" else local.num_envs, seed=local.seed)
    try:
        check_training_memory(cfg, venv.single_observation_space, venv.single_action_space, device)
        policy = make_policy(cfg, venv, device)
        if cfg.eval_episodes or cfg.eval_every:  # can the evaluations run?
            from agents.evaluate import check_episode_limit, eval_envs
            check_episode_limit(venv, cfg.env, remedy="skip the evaluations: --eval-episodes 0")
            eval_envs(policy, device, max(cfg.eval_episodes, 1))
        if resume is not None:
            run_dir = run_parent
        else:
            run_dir = distributed.on_rank0(make_run_dir, cfg.logdir, cfg.env, cfg.core, cfg.seed,
                                           cfg.run_name)
        if distributed.is_main():  # under torchrun rank 0 alone writes and prints
            meta = {**cfg.to_dict(), "preset_settings": preset_settings,
                    "world_size": distributed.world_size(), "git_commit": git_commit(),
                    "device_resolved": str(device), "torch": torch.__version__,
                    "torch_threads_resolved": torch.get_num_threads(),
                    "params": sum(p.numel() for p in policy.parameters()), "command": command,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_json(os.path.join(run_dir, "config.json" if resume is None else
                                    "config_resumed.json"), meta)
            if resume is None:
                print(preset_line, file=sys.stderr, flush=True)
            if cfg.progress:
                print(f"training {cfg.core} on {cfg.env} {cfg.env_kwargs or ''} for "
                      f"{cfg.num_updates * cfg.batch_size:,} steps on {device}; run folder {run_dir}",
                      file=sys.stderr)
        learner = impala.train if cfg.algo == "impala" else ppo.train
        summary = learner(cfg, venv, policy, run_dir, device, resume=resume, stop=stop)
    finally:
        venv.close()
    if distributed.is_main():
        print(training_report(summary))
    return (1 if summary["status"].startswith(("diverged", "failed")) else 0), summary


def training_report(s: dict) -> str:
    """The lines a finished run prints: what it achieved and where it wrote it."""
    minutes, seconds = divmod(int(round(s["wall_time_s"])), 60)
    lines = []
    if s["status"].startswith("diverged"):
        lines.append(f"error: training stopped at step {s['total_steps']:,}: "
                     f"{s['status'][len('diverged: '):]}")
        lines.append(f"  last good checkpoint: {s['checkpoint']}")
    else:
        lines.append(f"{s['status']}: {s['total_steps']:,} steps in {minutes}m{seconds:02d}s "
                     f"({s['sps']:,.0f} SPS)")

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"
    lines.append(f"  training, last 100 episodes: return {fmt(s['train_return'])}, "
                 f"success {fmt(s['train_success_rate'])}")
    if s["final_eval_episodes"]:
        lines.append(f"  evaluation, {s['final_eval_episodes']} episodes: return "
                     f"{fmt(s['final_return'])}, success {fmt(s['final_success_rate'])}")
    lines.append(f"  best success rate: {fmt(s['best_success_rate'])}")
    lines.append(f"logs:       tensorboard --logdir {s['run_dir']}")
    lines.append(f"summary:    {os.path.join(s['run_dir'], 'summary.json')}")
    if not s["status"].startswith("diverged"):
        # under torchrun a resumed run is launched the same way (rank 0 reads the checkpoint)
        launch = ("torchrun <the same options> train.py" if os.environ.get("WORLD_SIZE", "1") != "1"
                  else "python train.py")
        lines.append(f"checkpoint: {s['checkpoint']}   (continue: {launch} --resume {s['run_dir']} "
                     "--total-steps N; evaluate: python train.py eval --checkpoint ...)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a checkpoint: play whole episodes with the recurrent state carried across steps;
    report success and return."""

    checkpoint: str
    """Checkpoint file or run folder."""
    episodes: int = 100
    """Episodes to play."""
    video: Annotated[str | None, tyro.conf.arg(metavar="OUT.gif")] = None
    """Also save one episode as a GIF."""
    greedy: bool = True
    """Take the most likely action; --no-greedy samples from the policy."""
    seed: OptInt = None
    """Env seed (default: training seed + 10000)."""
    num_envs: OptInt = None
    """Envs in parallel (default: one per episode, as many as fit in memory)."""
    max_episode_steps: OptInt = None
    """The step guard: stop with an error when an episode runs longer (default: 100000)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    json: bool = False
    """Print the result as one JSON line."""
    ablate_memory: bool = False
    """Zero the core state before every step: how much of the agent's success rests on its
    memory (on a memory task it falls to chance or below)."""

    def __post_init__(self) -> None:
        for name, low in (("episodes", 1), ("num_envs", 1), ("max_episode_steps", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def torch_settings(cfg: TrainConfig, device) -> None:
    """The run's torch threads, and on CUDA its float32 matmul precision (--tf32)."""
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")


def run_eval(args: EvalArgs) -> int:
    from agents import checkpoint as ckpt
    from agents.evaluate import evaluate, record_gif
    from policies.deploy import policy_from_checkpoint

    data = ckpt.load(args.checkpoint)
    cfg = TrainConfig.from_dict({**data["config"], "resume": None})
    device = resolve_device(args.device)
    torch_settings(cfg, device)  # the run's (one thread: these small batches are fastest so)
    seed_everything(cfg.seed if args.seed is None else args.seed)
    if "policy" in data:  # the network as the checkpoint describes it (policies.load_policy's call)
        policy = policy_from_checkpoint(data, device).model
    else:  # an older checkpoint: the network rebuilt from the config and the env
        probe = make_env(cfg, num_envs=1)
        policy = make_policy(cfg, probe, device)
        probe.close()
        try:
            policy.load_state_dict({k: v.to(device) for k, v in data["model"].items()})
        except RuntimeError as err:
            raise ckpt.CheckpointError("checkpoint weights do not fit its own config: "
                                       f"{one_line(err)[:200]}") from None
        policy.eval()
    result = evaluate(policy, cfg, device, episodes=args.episodes, greedy=args.greedy,
                      seed=args.seed, num_envs=args.num_envs,
                      max_episode_steps=args.max_episode_steps, ablate_memory=args.ablate_memory,
                      note=lambda text: print(f"note: {text}", file=sys.stderr))
    result.update(checkpoint=data["path"], env=cfg.env, core=cfg.core,
                  global_step=data["global_step"])
    if args.video:
        try:
            result["video"] = record_gif(policy, cfg, device, args.video, greedy=args.greedy,
                                         seed=args.seed)
        except ValueError as err:
            raise UsageError(one_line(err)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    succ = "n/a" if result["success_rate"] is None else f"{result['success_rate']:.3f}"
    print(f"{cfg.core} on {cfg.env} after {data['global_step']:,} steps: success {succ}, return "
          f"{result['return_mean']:.3f} +- {result['return_std']:.3f} over {result['episodes']} "
          f"episodes ({'greedy' if args.greedy else 'sampled'} actions"
          f"{', memory ablated' if args.ablate_memory else ''})")
    if args.video:
        v = result["video"]
        print(f"GIF: {v['file']} ({v['frames']} frames, return {v['return']:.3f})")
    return 0


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportArgs:
    """Export a trained policy's one-step network (inputs: observation, core state, episode start,
    previous action and reward; outputs: action logits or parameters, value, next state) to ONNX
    or TorchScript, for running it outside this package (docs/deploy.md)."""

    checkpoint: str
    """Checkpoint file or run folder."""
    out: str
    """The file to write."""
    format: Literal["onnx", "torchscript"] = "onnx"
    """onnx (run it with onnxruntime) or torchscript (torch.jit.load)."""


def run_export(args: ExportArgs) -> int:
    from policies.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, args.format)
    print(f"{result['format']}: {result['file']} (inputs {', '.join(result['inputs'])}; outputs "
          f"{', '.join(result['outputs'])}; {result['seconds']:.2f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# compare, report, presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareArgs:
    """Train every (core, sweep value, seed) as its own run under --out, at most --jobs at a time;
    rerun the same command to continue a stopped sweep. Other flags (or all flags after --) go to
    every run; {expression} in them is evaluated with the sweep variable, e.g. --num-steps
    '{length + 1}'. Writes report.md and report.png at the end."""

    out: str
    """Sweep folder (created; reused to continue)."""
    env: str = TrainConfig.env
    """Environment id."""
    env_kwargs: Kwargs = field(default_factory=dict)
    """Fixed env keyword arguments of every run."""
    cores: str = "lstm,gru,urlstm,urgru,mlp"
    """Comma-separated cores."""
    seeds: str = "3"
    """Number of seeds N (seeds 1..N) or a list such as 1,2,5."""
    sweep: Annotated[str | None, tyro.conf.arg(metavar="KEY=V1,V2,...")] = None
    """An env keyword and its values, e.g. length=50,100,250."""
    jobs: int = 1
    """Runs at a time (each run uses --torch-threads threads, 1 by default)."""
    progress: bool = True
    """Show a progress bar over the runs."""

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(x) for x in self.seeds.split(",")]
        except ValueError:
            raise UsageError("--seeds takes a count or a comma-separated list of integers, got "
                             f"{self.seeds!r}") from None
        seeds = list(range(1, seeds[0] + 1)) if len(seeds) == 1 else seeds
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seeds must give at least one seed and no repeats, got {seeds!r}")
        return seeds


def run_compare(args: CompareArgs, train_flags: Sequence[str], check: Callable[[list[str]], None],
                command: str) -> int:
    """The sweep; ``check(train_flags)`` raises UsageError for flags a run would refuse."""
    from agents import sweep

    def check_run(flags: Sequence[str]) -> None:
        try:
            check(list(flags))
        except (UsageError, ConfigError) as err:
            raise ValueError(str(err)) from None

    cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    try:
        result = sweep.compare(args.env, cores, args.seed_list(), args.sweep, args.env_kwargs,
                               list(train_flags), args.out, jobs=args.jobs, progress=args.progress,
                               check=check_run, command=command)
    except sweep.SweepError as err:
        raise UsageError(one_line(err)) from None
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to continue the sweep in {args.out}",
              file=sys.stderr)
        return 130
    print(f"{result['done']}/{result['runs']} runs done in {args.out}")
    if result["failed"]:
        print(f"failed: {', '.join(result['failed'])} (logs: {args.out}/<name>.log; rerun the "
              "command to redo them)")
    if result["report"]:
        print(f"report: {result['report']} and {os.path.join(args.out, 'report.png')}")
    print(f"logs:   tensorboard --logdir {args.out}")
    return 1 if result["failed"] else 0


@dataclass(frozen=True)
class ReportArgs:
    """Aggregate a folder of runs (train.py compare) into report.md, report.png/pdf and
    report.json. Several folders (one task each): each gets its report, and one table of every
    core on every task is printed."""

    folders: tyro.conf.Positional[tuple[str, ...]]
    """The sweep folders (holding run folders)."""
    key: str | None = None
    """The swept env keyword (default: from sweep.json, or the one env keyword that differs
    across runs)."""


def run_report(args: ReportArgs) -> int:
    from agents import report

    try:
        summaries = [report.summarise(folder, args.key) for folder in args.folders]
    except FileNotFoundError as err:
        raise UsageError(one_line(err)) from None
    mds = [report.write_summary(folder, *s) for folder, s in zip(args.folders, summaries)]
    if len(mds) > 1:
        print("Final greedy success or return: mean [min, max] over seeds (k/n seeds whose evaluation "
              f"curve reached {report.SOLVED}).\n")
        print(report.tasks_markdown(summaries), end="")
    else:
        with open(mds[0]) as f:
            print(f.read(), end="")
    for folder, md in zip(args.folders, mds):
        print(f"written: {md}, {os.path.join(folder, 'report.png')}")
    return 0


@dataclass(frozen=True)
class PresetsArgs:
    """List the presets of tuned settings: what each matches, for which --algo, its settings as
    flags and what was measured with it. With --env: the preset that a run on that id would use,
    and its settings."""

    env: str | None = None
    """Show the preset for this environment id."""
    algo: str = "ppo"
    """Learner: ppo or impala."""
    env_kwargs: Kwargs = field(default_factory=dict)
    """With --env: env keyword arguments to evaluate the settings with."""


def run_presets(args: PresetsArgs) -> int:
    from agents import presets

    if args.algo not in presets.ALGOS:
        raise UsageError(f"--algo must be one of {', '.join(presets.ALGOS)}, got {args.algo!r}")
    try:
        if args.env is None:
            print(presets.describe(), end="")
            return 0
        preset = presets.find(args.env, args.algo)
        if preset is None:
            print(f"no preset for {args.env} with --algo {args.algo}")
            return 0
        settings = presets.resolve(preset, args.env, args.env_kwargs)
    except presets.PresetError as err:
        raise UsageError(one_line(err)) from None
    print(f"{preset.name} [{preset.algo}]: {presets.as_flags(settings)}")
    print(f"  evidence: {preset.evidence}")
    return 0


def shell_command(prog: str, argv: Sequence[str]) -> str:
    """The command line as a person would type it again."""
    return " ".join([prog, *map(shlex.quote, argv)])

