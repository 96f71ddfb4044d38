"""Train a recurrent agent on a memory task, evaluate a checkpoint, or compare memory cores.

    python train.py [flags]                       # train (defaults: UR-LSTM on the passive T-maze)
    python train.py eval --checkpoint RUN_OR_FILE [--episodes N] [--video out.gif]
    python train.py compare --cores lstm,urlstm --seeds 3 --sweep length=50,100 --out runs/NAME [train flags]
    python train.py report runs/NAME              # report.md + report.png of a folder of runs
    python train.py presets [--env ID]            # the presets of tuned settings per environment
    python train.py export --checkpoint RUN --out policy.onnx [--format onnx|torchscript]

The only module that parses flags: tyro builds them from ``agents.config.TrainConfig`` and the
dataclasses of ``agents.commands`` (their field docstrings are the help text). Bad input prints
one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, NamedTuple, Sequence

from agents import commands, presets
from agents.config import RESUMABLE_OVERRIDES, ConfigError, Kwargs, TrainConfig
from agents.runfolder import UsageError, cli, one_line, parse_args

DESCRIPTION = ("Train a recurrent agent on a memory task. Naming --env applies its preset of tuned "
               "settings (agents/presets.toml) under the flags given here. Other commands: eval, "
               "compare, report, presets, export (python train.py COMMAND --help).")


@dataclasses.dataclass(frozen=True)
class _Choice:
    """The flags that pick the preset, or the run to resume."""

    env: str = TrainConfig.env
    algo: str = TrainConfig.algo
    preset: str = TrainConfig.preset
    resume: str | None = None
    device: str = TrainConfig.device
    env_kwargs: Kwargs = dataclasses.field(default_factory=dict)


class ParsedTrain(NamedTuple):
    cfg: TrainConfig
    supplied: dict[str, Any]   # the settings the preset supplied
    resume: dict | None        # the loaded checkpoint of --resume


def typed_fields(argv: Sequence[str]) -> set[str]:
    """The config fields whose flags appear in ``argv`` (--name, --name=V, --no-name)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            name = name[3:] if name.startswith("no_") and name[3:] in names else name
            out.add(name)
    return out & names


def parse_train(argv: Sequence[str], load_checkpoint: Callable[[str], dict] | None = None
                ) -> ParsedTrain:
    """Flags -> config, with the preset of --env (or the saved config of --resume) under them."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        parse_args(TrainConfig, argv, "train.py", description=DESCRIPTION)  # prints, exits 0
    choice, _ = parse_args(_Choice, argv, "train.py", unknown=True)
    if choice.resume is not None:  # the run's saved settings, under the flags that may change
        from agents import checkpoint as ckpt

        resume = (load_checkpoint or ckpt.load)(choice.resume)
        saved = TrainConfig.from_dict({**resume["config"], "resume": choice.resume})
        cfg = parse_args(TrainConfig, argv, "train.py", default=saved)
        changed = [f.name for f in dataclasses.fields(cfg) if f.name not in RESUMABLE_OVERRIDES
                   and getattr(cfg, f.name) != getattr(saved, f.name)]
        if changed:
            raise UsageError(f"{', '.join(_flag(k) for k in changed)} cannot change when resuming "
                             f"(allowed: {', '.join(map(_flag, RESUMABLE_OVERRIDES))})")
        if resume["update"] >= cfg.num_updates:
            raise UsageError(f"the run already did {resume['global_step']} steps: raise "
                             "--total-steps to continue it")
        return ParsedTrain(cfg, {}, resume)
    typed = typed_fields(argv)
    try:
        flags, supplied = presets.flags_under(choice.env, choice.algo, choice.preset,
                                              choice.env_kwargs, typed)
    except presets.PresetError as err:
        raise UsageError(one_line(err)) from None
    return ParsedTrain(parse_args(TrainConfig, flags[0] + argv + flags[1], "train.py"), supplied, None)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_train(argv: Sequence[str], stop: Callable[[int], bool] | None = None) -> tuple[int, dict]:
    """Parse, build and train; returns (exit code, summary)."""
    from agents import distributed

    choice, _ = parse_args(_Choice, [a for a in argv if a not in ("-h", "--help")], "train.py",
                           unknown=True)
    distributed.init(choice.device)  # under torchrun: join its process group (else nothing)
    from agents import checkpoint as ckpt

    parsed = parse_train(argv, lambda path: distributed.on_rank0(ckpt.load, path))
    return commands.run_train(parsed.cfg, parsed.resume, presets.line(parsed.cfg, parsed.supplied),
                              commands.shell_command("python train.py", argv), parsed.supplied,
                              stop=stop)


def run_compare(argv: Sequence[str]) -> int:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, unknown = parse_args(commands.CompareArgs, own, "train.py compare", unknown=True)
    return commands.run_compare(args, unknown + extra, lambda flags: parse_train(flags),
                                commands.shell_command("python train.py compare", argv))


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": lambda argv: run_train(argv)[0],
    "eval": lambda argv: commands.run_eval(parse_args(commands.EvalArgs, argv, "train.py eval")),
    "compare": run_compare,
    "report": lambda argv: commands.run_report(parse_args(commands.ReportArgs, argv, "train.py report")),
    "export": lambda argv: commands.run_export(parse_args(commands.ExportArgs, argv, "train.py export")),
    "presets": lambda argv: commands.run_presets(parse_args(commands.PresetsArgs, argv,
                                                            "train.py presets")),
}


def main(argv: Sequence[str] | None = None) -> int:
    from agents.checkpoint import CheckpointError
    from agents.evaluate import EvaluationError
    from agents.resources import ResourceError
    from policies import ActionMaskError, PolicyLoadError
    from policies.export import ExportError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    try:
        return COMMANDS[command](argv)
    except (UsageError, ConfigError, CheckpointError, EvaluationError, ResourceError,
            PolicyLoadError, ExportError, ActionMaskError) as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
            print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if "agents.distributed" in sys.modules:
            sys.modules["agents.distributed"].shutdown()


if __name__ == "__main__":
    cli(main)
