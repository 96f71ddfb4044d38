"""The documentation: README.md is a front page (at most 250 lines, the two commands first), and every
relative link in README.md and docs/ resolves, to a file and, with ``#anchor``, to a heading there
(GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
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
