"""Every table of results on the pages is what the command named above it prints on the shipped store:
a block between `<!-- bnrun: COMMAND -->` and `<!-- /bnrun -->` in README.md or docs/*.md (the study's
headline: `<!-- headline: COMMAND -->` … `<!-- /headline -->`) is COMMAND's stdout, verbatim.
`python scripts/figures.py` rewrites every block from its command."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from conftest import REPO, SHIPPED, figures_script

SCRIPT = figures_script()
BLOCKS = [(page, command, text) for page in SCRIPT.PAGES for command, text in SCRIPT.blocks(page)]


def block_id(block: tuple) -> str:
    page, command, _ = block
    return f"{page.name}: {command.removeprefix('bnrun ')}"


def test_the_readme_gives_the_claims_and_the_study_its_headline():
    assert any(command.startswith("bnrun claims ") for command, _ in SCRIPT.blocks(REPO / "README.md"))
    headline = [text for command, text in SCRIPT.blocks(REPO / "docs" / "study.md") if command.startswith("bnrun report ")]
    assert headline, "docs/study.md has no <!-- headline: bnrun report ... --> block"
    assert headline[0].startswith("| arch |"), headline[0][:200]


def test_the_study_generates_its_tables():
    assert sum(page.name == "study.md" for page, _, _ in BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(block) for block in BLOCKS])
def test_a_block_names_a_reproducible_command(block):
    _, command, _ = block
    assert command.startswith(("bnrun report ", "bnrun claims ")) and "--db" not in command and "--output" not in command


def test_the_readme_findings_are_the_claims_block():
    assert any(command.startswith("bnrun claims ") for command, _ in SCRIPT.blocks(REPO / "README.md"))


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(block) for block in BLOCKS])
def test_the_block_is_the_commands_output_on_the_shipped_store(block):
    """Read-only: the report opens the shipped store without writing it."""
    page, command, text = block
    result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--db", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.stdout == text, f"{page.name}: run python scripts/figures.py"


def test_the_script_rewrites_a_stale_block(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    command = "bnrun report --format markdown --run-id 1-12"
    page.write_text(f"before\n<!-- bnrun: {command} -->\nstale\n<!-- /bnrun -->\nafter\n")
    monkeypatch.setattr(SCRIPT, "bnrun", lambda arguments, db: f"{shlex.join(arguments)} on {db}\n")
    monkeypatch.setattr(SCRIPT, "PAGES", (page,))
    monkeypatch.setattr(SCRIPT, "REPO", tmp_path)
    assert SCRIPT.refill_blocks(tmp_path / "x.db", check=True) and "stale" in page.read_text()
    SCRIPT.refill_blocks(tmp_path / "x.db")
    assert page.read_text() == (f"before\n<!-- bnrun: {command} -->\n"
                                f"report --format markdown --run-id 1-12 on {tmp_path / 'x.db'}\n<!-- /bnrun -->\nafter\n")
    assert SCRIPT.refill_blocks(tmp_path / "x.db", check=True) == []
