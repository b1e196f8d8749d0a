"""The README's headline results are exactly what the command named above them prints on the shipped
store: the block between `<!-- headline: COMMAND -->` and `<!-- /headline -->` is COMMAND's output."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from conftest import REPO

SHIPPED = REPO / "bnrun.db"
HEADLINE = re.compile(r"<!-- headline: (bnrun [^\n]*?) -->\n(.*?)<!-- /headline -->\n", re.S)


def headline_blocks() -> list[tuple[str, str]]:
    return HEADLINE.findall((REPO / "README.md").read_text())


def test_the_readme_marks_its_headline():
    blocks = headline_blocks()
    assert blocks, "README.md has no <!-- headline: bnrun ... --> block"
    for command, block in blocks:
        assert command.startswith("bnrun report ") and "--db" not in command
        assert block.startswith("| arch |"), block[:200]


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped bnrun.db in this checkout")
@pytest.mark.parametrize(("command", "block"), headline_blocks() or [("", "")])
def test_the_headline_is_the_commands_output_on_the_shipped_store(command, block):
    """Read-only: the report opens the shipped store without writing it."""
    result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--db", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.stdout == block
