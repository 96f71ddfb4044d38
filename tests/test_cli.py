"""The command line as a user meets it: every command's --help exits 0, every way a process can
end gives its right exit code (the fast exit included), and every command written in README.md,
docs/ and the presets parses."""

from __future__ import annotations

import dataclasses
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from agents import commands, presets
from agents.runfolder import parse_args

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8", "--seq-len", "8",
        "--hidden-size", "16", "--embed-size", "16", "--device", "cpu", "--eval-episodes", "0"]


def run(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kwargs)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["compare"], ["report"], ["presets"],
                                     ["export"]])
def test_help_of_every_command_exits_0(command):
    p = run(*command, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: train.py") and "--help" in p.stdout and not p.stderr


def test_the_exit_code_of_every_way_a_process_ends(tmp_path):
    """Normal end 0, bad input 2 (one line), uncaught exception 1 with its traceback, Ctrl-C 130,
    sys.exit's own code: through the same fast exit that ``python train.py`` uses."""
    def cli(body: str) -> subprocess.CompletedProcess:
        code = f"import sys, train\n{body}"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    assert cli("train.cli(lambda: 0)").returncode == 0
    assert cli("train.cli(lambda: None)").returncode == 0
    assert cli("train.cli(lambda: 2)").returncode == 2
    assert cli("train.cli(lambda: sys.exit(3))").returncode == 3
    crash = cli("train.cli(lambda: 1 / 0)")
    assert crash.returncode == 1 and "ZeroDivisionError" in crash.stderr and "Traceback" in crash.stderr

    ctrl_c = cli("def f():\n    raise KeyboardInterrupt\ntrain.cli(f)")
    assert ctrl_c.returncode == 130 and ctrl_c.stderr.strip() == "interrupted"
    assert run("--num-envs", "0").returncode == 2
    # output written before the fast exit is not lost
    out = cli("train.cli(lambda: print('x' * 100000, end='') or 0)")
    assert out.returncode == 0 and len(out.stdout) == 100000


def test_ctrl_c_during_a_run_saves_and_exits_0(tmp_path):
    """Ctrl-C finishes the update, writes the checkpoint and ends the run with exit code 0 (a
    KeyboardInterrupt that reaches the top, a second Ctrl-C, gives 130: tested above)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--total-steps",
                             "100000000", "--logdir", str(tmp_path), "--run-name", "r",
                             "--no-progress", "--save-every", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (tmp_path / "r" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the first update's checkpoint: inside the training loop
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert out.startswith("interrupted:") and "Traceback" not in err, (out, err)


# ---------------------------------------------------------------------------------------------
# the commands written in the documentation
# ---------------------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"<|\.\.\.|\bN\b|\bL\b|\bID\b|\bRUN\b|\bNAME\b|\bS\b|\bG\b|L\+1")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a Markdown page."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if lang is None:
                lang, body = line.strip()[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after ``train.py``) of every ``train.py`` line in a shell code block of
    README.md and docs/, backslash continuations joined; lines with placeholders are left out."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for lang, block in code_blocks(page.read_text()):
            if lang not in ("", "bash", "sh", "console", "shell"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                m = re.search(r"\btrain\.py\b(.*)$", line)
                if not m or PLACEHOLDER.search(m.group(1)) or "&&" in m.group(1):
                    continue
                found.append((page.name, shlex.split(m.group(1))))
    return found


DOCUMENTED = documented_commands()


def parse_documented(argv: list[str]) -> None:
    """Parse (never run) a documented command the way ``train.main`` would."""
    argv = list(argv)
    command = argv.pop(0) if argv and argv[0] in train.COMMANDS else "train"
    if command == "train":
        if "--resume" in argv:  # the run folder does not exist here: parse the other flags
            i = argv.index("--resume")
            argv = argv[:i] + argv[i + 2:]
        train.parse_train(argv)
    elif command == "compare":
        own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
            else (argv, [])
        args, unknown = parse_args(commands.CompareArgs, own, "train.py compare", unknown=True)
        args.seed_list()
        flags = unknown + extra
        if not any("{" in f for f in flags):  # sweep expressions are filled in per run
            train.parse_train(flags)
    else:
        cls = {"eval": commands.EvalArgs, "report": commands.ReportArgs,
               "presets": commands.PresetsArgs, "export": commands.ExportArgs}[command]
        parse_args(cls, argv, f"train.py {command}")


def test_the_documentation_has_commands_to_check():
    assert len(DOCUMENTED) >= 15, DOCUMENTED


@pytest.mark.parametrize("page,argv", DOCUMENTED, ids=[" ".join(a)[:60] or "(none)" for _, a in DOCUMENTED])
def test_every_documented_command_parses(page, argv):
    parse_documented(argv)


@pytest.mark.parametrize("preset", [p for p in presets.load() if p.ids],
                         ids=lambda p: f"{p.name}")
def test_every_preset_gives_a_valid_config(preset):
    """Each preset's settings, at its environments' default kwargs, make a valid config."""
    for env in preset.ids:
        cfg, supplied, _ = train.parse_train(["--env", env, "--algo", preset.algo])
        assert cfg.preset == preset.name and cfg.env == env
        # the settings shown as flags by `train.py presets` give the same config
        flags = presets.flag_list({k: v for k, v in supplied.items() if k != "env_kwargs"})
        same = train.parse_train(["--env", env, "--algo", preset.algo, "--preset", "none",
                                  "--env-kwargs", *[f"{k}={v!r}" for k, v in cfg.env_kwargs.items()],
                                  *shlex.split(" ".join(flags))]).cfg
        assert same == dataclasses.replace(cfg, preset="none")


def test_no_home_made_flag_generator_is_left():
    """The flags come from tyro alone: no module reads source code to build them."""
    for file in [ROOT / "train.py", *ROOT.glob("agents/*.py"), *ROOT.glob("supervised/*.py")]:
        text = file.read_text()
        assert "inspect.getsource" not in text and "add_argument(" not in text, file
    assert len((ROOT / "train.py").read_text().splitlines()) <= 200


def test_typed_fields_finds_every_spelling():
    assert train.typed_fields(["--num-envs", "4", "--no-anneal-lr", "--gamma=0.9", "x"]) == {
        "num_envs", "anneal_lr", "gamma"}


def test_export_from_the_command_line(tmp_path):
    """A tiny run exported both ways; bad format, unwritable output and a checkpoint without the
    policy description are one line and exit code 2."""
    assert run(*TINY, "--total-steps", "32", "--logdir", str(tmp_path), "--run-name", "r",
               "--no-progress").returncode == 0
    for fmt, name in (("onnx", "p.onnx"), ("torchscript", "p.pt")):
        p = run("export", "--checkpoint", str(tmp_path / "r"), "--format", fmt, "--out",
                str(tmp_path / name))
        assert p.returncode == 0 and (tmp_path / name).stat().st_size > 0, p.stderr
    import torch

    old = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    del old["policy"]
    torch.save(old, tmp_path / "old.pt")
    for argv, message in ((["--format", "tflite", "--out", str(tmp_path / "x")], "tflite"),
                          (["--out", str(tmp_path / "no" / "such" / "x.onnx")], "cannot write"),
                          (["--out", str(tmp_path / "y.onnx")], "no policy description")):
        ckpt = str(tmp_path / ("old.pt" if message == "no policy description" else "r"))
        p = run("export", "--checkpoint", ckpt, *argv)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and message in lines[0], p.stderr
