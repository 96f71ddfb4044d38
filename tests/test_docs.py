"""The documentation: README.md is a front page (at most 250 lines and 1,300 words, the two commands
first), every relative link in README.md and docs/ resolves, to a file and, with ``#anchor``, to a
heading there (GitHub's anchors), and the examples of the README and docs/extending.md run."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agents import presets
from agents.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXTENDING = ROOT / "docs" / "extending.md"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"[*_`~]|<[^>]+>", "", text.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(page.read_text()))]


def broken(page: Path) -> list[str]:
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target} (no heading #{anchor} in {path or page.name})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken(page) == []


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert len(text.split()) <= 1300  # words, as wc -w counts them
    assert text.splitlines()[3:5] == [
        'pip install -e . && python train.py                # train a UR-LSTM agent on a memory task',
        'pip install -e ".[test]" && python -m pytest -q    # run the tests']
    assert len(links(ROOT / "README.md")) >= 10


def test_the_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "b.md").write_text("# A title, with: punctuation!\n## Speed\n## Speed\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md) [ok](b.md#a-title-with-punctuation) [ok](b.md#speed-1) [ok](#local)\n"
                    "# Local\n![img](missing.png) [bad](b.md#nope) [bad](b.md#not-a-heading)\n"
                    "`[code](nowhere.md)` [web](https://example.org/x)\n"
                    "```\n[in a fence](nowhere.md)\n```\n")
    assert anchors(tmp_path / "b.md") == {"a-title-with-punctuation", "speed", "speed-1"}
    assert broken(page) == ["missing.png (no such file)", "b.md#nope (no heading #nope in b.md)",
                            "b.md#not-a-heading (no heading #not-a-heading in b.md)"]


def test_readme_core_example_runs():
    """The README's "core inside your own model" block runs as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = next(b for b in blocks if "make_core" in b)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["y"].shape) == (100, 16, 128) and tuple(scope["out"].shape) == (16, 100, 128)


def marked_blocks(page: Path) -> dict[str, str]:
    """The fenced blocks of ``page`` marked ``<!-- tested: NAME -->`` on the line before: {NAME: code}."""
    found = re.findall(r"^<!-- tested: (\w+) -->\n(```|~~~)\w*\n(.*?)^\2", page.read_text(), re.M | re.S)
    return {name: code for name, _, code in found}


def run_block(name: str) -> dict:
    """Run the block ``name`` of docs/extending.md as a module of its own; its global names."""
    scope: dict = {"__name__": f"extending_{name}"}
    exec(compile(marked_blocks(EXTENDING)[name], f"docs/extending.md ({name})", "exec"), scope)
    return scope


def test_extending_marks_the_three_examples():
    assert set(marked_blocks(EXTENDING)) == {"core", "env", "preset"}


def test_extending_core_passes_the_checks_of_every_core(monkeypatch):
    """The example core, under the name "rnn", through tests/test_cores.py's interface tests: fast ==
    reference in float64 (outputs, state, gradients, resets), resets == separate episodes, step ==
    sequence, batch_first, parameters untouched."""
    import test_cores

    scope = run_block("core")
    assert tuple(scope["y"].shape) == (5, 3, 16) and tuple(scope["h"].shape) == (2, 3, 16)
    rnn, make_core = scope["TanhRNN"], test_cores.make_core
    monkeypatch.setattr(test_cores, "make_core",
                        lambda spec, *a, **kw: rnn(*a, **kw) if spec == "rnn" else make_core(spec, *a, **kw))
    for with_reset in (False, True):
        test_cores.test_fast_equals_reference("rnn", with_reset, "python")
    test_cores.test_resets_equal_separate_episodes("rnn")
    test_cores.test_step_equals_sequence("rnn")
    for impl in ("fast", "reference"):
        test_cores.test_batch_first("rnn", impl)
    test_cores.test_calls_leave_parameters_untouched("rnn", "python")
    with pytest.raises(ValueError, match="impl must be"):
        rnn(3, 4, impl="cuda")


@pytest.fixture
def echo_env():
    """The example environment, registered for the test and unregistered after it."""
    scope = run_block("env")
    yield scope
    gym.registry.pop("my/Echo-v0", None)


def test_extending_env_steps_under_envs_make(echo_env):
    venv, obs = echo_env["venv"], echo_env["obs"]
    assert obs.shape == (4, 1) and echo_env["terminated"].all()  # 6 steps: one episode of length 5
    assert set(echo_env["info"]) >= {"episode", "success", "final_obs"}
    assert (echo_env["info"]["episode"]["l"] == 6).all()
    venv.close()
    batched = gym.make_vec("my/Echo-v0", 8, vectorization_mode="vector_entry_point", length=3)
    single = gym.make("my/Echo-v0", length=3)
    obs, _ = batched.reset(seed=5)
    np.testing.assert_array_equal(obs[2], single.reset(seed=7)[0])  # env i of seed s == seed s + i
    bit = (obs[:, 0] > 0).astype(np.int64)  # [8] what the first observation shows
    for _ in range(3):
        obs, reward, terminated, _, _ = batched.step(1 - bit)  # before the question: no effect
        assert not terminated.any() and not reward.any() and not obs.any()
    _, reward, terminated, _, info = batched.step(bit)
    assert terminated.all() and (reward == 1).all() and (info["success"] == 1).all()
    batched.close()
    single.close()


def test_extending_preset_is_found_for_its_env(tmp_path):
    """The example preset, added to the data file, is the one a run on "my/Echo-v0" gets, and its
    settings pass the configuration's checks at several lengths."""
    file = tmp_path / "presets.toml"
    file.write_text(Path(presets.FILE).read_text() + "\n" + marked_blocks(EXTENDING)["preset"])
    every = presets.load(str(file))
    echo = presets.find("my/Echo-v0", "ppo", every)
    assert echo is not None and echo.name == "echo"
    assert presets.find("my/Echo-v0", "impala", every).name != "echo"
    assert presets.resolve(echo, "my/Echo-v0", {})["num_steps"] == 11
    for length in (1, 10, 300):
        settings = presets.resolve(echo, "my/Echo-v0", {"length": length})
        assert settings["seq_len"] == length + 1 and settings["env_kwargs"] == {"length": length}
        TrainConfig(env="my/Echo-v0", algo="ppo", **settings)  # raises ConfigError if invalid
