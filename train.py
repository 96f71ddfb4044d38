"""Train a recurrent agent on a memory task, evaluate a checkpoint, or compare memory cores.

    python train.py [flags]                       # train (defaults: UR-LSTM on the passive T-maze)
    python train.py eval --checkpoint RUN_OR_FILE [--episodes N] [--video out.gif]
    python train.py compare --cores lstm,urlstm --seeds 3 --sweep length=50,100 --out runs/NAME [train flags]
    python train.py report runs/NAME              # report.md + report.png of a folder of runs
    python train.py presets [--env ID]            # the presets of tuned settings per environment

The only module that parses flags: tyro builds them from ``agents.config.TrainConfig`` and the
dataclasses of ``agents.commands`` (their field docstrings are the help text). Bad input prints
one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import traceback
from typing import Any, Callable, NamedTuple, NoReturn, Sequence

from agents import commands
from agents.config import RESUMABLE_OVERRIDES, ConfigError, Kwargs, TrainConfig, kwargs_flags
from agents.runfolder import UsageError, one_line, parse_args

DESCRIPTION = ("Train a recurrent agent on a memory task. Naming --env applies its preset of tuned "
               "settings (agents/presets.toml) under the flags given here. Other commands: eval, "
               "compare, report, presets (python train.py COMMAND --help).")


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
    flags, supplied = preset_flags(choice, typed)
    return ParsedTrain(parse_args(TrainConfig, flags[0] + argv + flags[1], "train.py"), supplied, None)


def preset_flags(choice: _Choice, typed: set[str]
                 ) -> tuple[tuple[list[str], list[str]], dict[str, Any]]:
    """The flags that put the preset under the command line's (``typed``): the flags to put
    before and after the command line's, and the settings the preset supplied."""
    from agents import presets

    kwargs, kwargs_typed = choice.env_kwargs, "env_kwargs" in typed
    if choice.preset == "none":
        return ([], ["--preset", "none"]), {}
    try:
        preset = (presets.find(choice.env, choice.algo) if choice.preset == "auto"
                  else presets.by_name(choice.preset))
        if preset is None:
            return ([], ["--preset", "none"]), {}
        if preset.algo != choice.algo:
            raise UsageError(f"preset {preset.name} is for --algo {preset.algo}, not {choice.algo}: "
                             "pick another with --preset (python train.py presets lists them)")
        settings = presets.resolve(preset, choice.env, kwargs if kwargs_typed else {})
    except presets.PresetError as err:
        raise UsageError(one_line(err)) from None
    supplied = {k: v for k, v in settings.items() if k != "env_kwargs" and k not in typed}
    merged = dict(kwargs) if kwargs_typed else {}
    if not (kwargs_typed and not kwargs):  # --env-kwargs with nothing after it: none at all
        added = {k: v for k, v in settings.get("env_kwargs", {}).items() if k not in merged}
        merged.update(added)
        if added:
            supplied["env_kwargs"] = added
    before = [token for key, value in supplied.items() if key != "env_kwargs"
              for token in _tokens(key, value)]
    return (before, ["--env-kwargs", *kwargs_flags(merged), "--preset", preset.name]), supplied


def _tokens(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [_flag(key) if value else _flag("no_" + key)]
    return [_flag(key), "none" if value is None else str(value)]


def preset_line(cfg: TrainConfig, supplied: dict[str, Any]) -> str:
    """The first line of a run: which preset, and which flags came from it."""
    from agents.presets import as_flags

    if cfg.preset == "none":
        return "preset: none (every setting from the flags and the defaults)"
    if not supplied:
        return f"preset {cfg.preset}: every one of its settings was given as a flag"
    return (f"preset {cfg.preset} ({cfg.algo} on {cfg.env}; flags override it, --preset none drops "
            f"it): {as_flags(supplied)}")


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
    return commands.run_train(parsed.cfg, parsed.resume, preset_line(parsed.cfg, parsed.supplied),
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
    "presets": lambda argv: commands.run_presets(parse_args(commands.PresetsArgs, argv,
                                                            "train.py presets")),
}


def main(argv: Sequence[str] | None = None) -> int:
    from agents.checkpoint import CheckpointError
    from agents.evaluate import EvaluationError
    from agents.resources import ResourceError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    try:
        return COMMANDS[command](argv)
    except (UsageError, ConfigError, CheckpointError, EvaluationError, ResourceError) as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
            print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if "agents.distributed" in sys.modules:
            sys.modules["agents.distributed"].shutdown()


def exit_code(run: Callable[[], int | None]) -> int:
    """``run()``'s exit code, whatever way it ends: returned, ``sys.exit`` (``--help``: 0),
    Ctrl-C (130), or an uncaught exception (its traceback, 1)."""
    try:
        code = run()
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001 - reported like the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    return 0 if code is None else int(code)


def cli(run: Callable[[], int | None] = main) -> NoReturn:
    """Run ``run`` and end the process with its exit code. The exit is fast: after every other
    exit handler has closed what it owns (this one is registered first, so it runs last), the
    standard streams are flushed and the process ends without tearing down the interpreter's
    objects, which takes about a second once torch is imported and frees nothing the operating
    system would not."""
    code = [1]
    atexit.register(_leave, code)
    code[0] = exit_code(run)
    sys.exit(code[0])


def _leave(code: list[int]) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code[0])


if __name__ == "__main__":
    cli()
