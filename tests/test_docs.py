"""The pages cannot drift: docs/cli.md is what scripts/cli_reference.py renders from `bnrun --help`, every
relative link in README.md and docs/*.md names an existing file (and its `#anchor` a heading there), and
every image a page shows exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bnrun.cli.reference import render
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(!?)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*(\S+)", re.M)
HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:


def prose(text: str) -> str:
    """The page without its code blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[tuple[bool, str]]:
    """(is an image, target) for every link, reference definition and HTML image in the page's prose."""
    body = prose(text)
    found = [(bang == "!", target) for bang, target in LINK.findall(body)]
    found += [(False, target) for target in REFERENCE.findall(body)]
    return found + [(True, target) for target in HTML_IMAGE.findall(body)]


def anchors(text: str) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def broken_links(page: Path) -> list[str]:
    """Every relative link of `page` whose file is missing or whose #anchor is no heading of that file."""
    broken = []
    for _, target in links(page.read_text()):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    assert not broken_links(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_image_shown_exists(page):
    images = [target for image, target in links(page.read_text()) if image and not EXTERNAL.match(target)]
    missing = [target for target in images if not (page.parent / target).is_file()]
    assert not missing


def test_the_study_shows_its_figures_from_docs():
    shown = {target for image, target in links((REPO / "docs" / "study.md").read_text()) if image}
    assert "batch_stats.png" in shown and len(shown) >= 10, shown


def test_a_broken_link_or_anchor_or_image_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n\n## Beyond one machine\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#beyond-one-machine) [top](#the-page) [web](https://example.org/x)\n`[code](nowhere.md)`\n\n"
        "# The page\n\n[gone](missing.md) [bad anchor](other.md#nowhere) ![lost](lost.png)\n"
        '<img src="also_lost.png">\n\n```text\n[inside a fence](nowhere.md)\n```\n'
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#nowhere: no heading #nowhere in other.md",
        f"lost.png: no file {tmp_path / 'lost.png'}",
        f"also_lost.png: no file {tmp_path / 'also_lost.png'}",
    ]


def test_help_paragraphs_are_wrapped_by_the_terminal_not_by_the_source():
    from bnrun.cli.commands import unwrapped

    assert unwrapped("First line.\n\n    A paragraph\n    in two lines.\n\n    code()") == (
        "First line.\n\nA paragraph in two lines.\n\ncode()")
    page = (REPO / "docs" / "cli.md").read_text()
    assert '"input" (the training split\'s mean and std)' in page  # its docstring breaks the line after "mean"
    assert "--help " in page and "<bool>" not in page  # a switch takes no value: no type beside it


def test_the_cli_reference_is_what_bnrun_prints():
    assert (REPO / "docs" / "cli.md").read_text() == render(), "run python scripts/cli_reference.py"


@pytest.mark.slow  # two subprocesses of the script (test_the_cli_reference_is_what_bnrun_prints checks the page)
def test_the_reference_script_checks_and_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "scripts" / "cli_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = tmp_path / "cli.md"
    assert script.main(["--check", str(page)]) == 1  # no page yet
    assert script.main([str(page)]) == 0
    assert script.main(["--check", str(page)]) == 0
    page.write_text(page.read_text().replace("## bnrun train", "## bnrun training"))
    assert script.main(["--check", str(page)]) == 1
