"""Regenerate every figure the pages show (README.md and docs/*.md; not the ui_*.png screenshots) and
every generated block of the pages, each from its command, on one store.

    python scripts/figures.py                  # figures and blocks, from ./bnrun.db
    python scripts/figures.py --db other.db    # from another store (read only)
    python scripts/figures.py --check          # write nothing; exit 1 if a figure or block is stale

A figure's command is the `bnrun plot ...` line its PNG records in its `bnrun:command` chunk; a PNG
without one takes its command from COMMANDS below. Commands run in-process from the repository root,
so each `--output` lands where the command names it. A block is the text between
`<!-- bnrun: COMMAND -->` and `<!-- /bnrun -->` (the study's headline: `<!-- headline: COMMAND -->` and
`<!-- /headline -->`): COMMAND's stdout on the store, written in place.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
SCREENSHOT = re.compile(r"ui_.*\.png")
BLOCK = re.compile(r"<!-- (bnrun|headline): (bnrun [^\n]*?) -->\n(.*?)<!-- /\1 -->\n", re.S)

# The commands of figures whose PNG does not record one (made before PNGs carried their command).
COMMANDS = {
    "docs/learning_curves_mlp.png": "bnrun plot --arch mlp --where epochs=20 --where depth=none --where dropout=0 "
                                    "--output docs/learning_curves_mlp.png",
    "docs/learning_curves_cnn.png": "bnrun plot --arch cnn --where epochs=10 --where train_subset=none "
                                    "--output docs/learning_curves_cnn.png",
    "docs/depth_mlp.png": "bnrun plot --x depth --arch mlp --where width=128 --where epochs=10 --where lr=0.05 "
                          "--where init=default --output docs/depth_mlp.png",
    "docs/gen_gap_subset.png": "bnrun plot --x train_subset --arch mlp --where width=128 --where epochs=30 "
                               "--where dropout=0 --metric gen_gap --output docs/gen_gap_subset.png",
    "docs/gen_gap_batch_size.png": "bnrun plot --x batch_size --arch mlp --where epochs=10 --where lr=0.05 "
                                   "--where depth=none --metric train_gap --output docs/gen_gap_batch_size.png",
    "docs/batch_stats.png": "bnrun plot --diagnostic batch_stats --run-id 1-12 --output docs/batch_stats.png",
    "docs/lr_mlp.png": "bnrun plot --x lr --arch mlp --where epochs=10 --where batch_size=128 --where depth=none "
                       "--output docs/lr_mlp.png",
    "docs/lr_cnn.png": "bnrun plot --x lr --arch cnn --where epochs=2 --output docs/lr_cnn.png",
    "docs/batch_size_mlp.png": "bnrun plot --x batch_size --arch mlp --where epochs=10 --where lr=0.05 "
                               "--where depth=none --output docs/batch_size_mlp.png",
    "docs/loss_ratio.png": "bnrun plot --diagnostic loss_ratio --output docs/loss_ratio.png",
    "docs/mode_gap.png": "bnrun plot --diagnostic mode_gap --output docs/mode_gap.png",
}


def shown_figures() -> list[Path]:
    """Every PNG a page shows, once, screenshots left out."""
    found: dict[Path, None] = {}
    for page in PAGES:
        for target in IMAGE.findall(page.read_text()):
            path = (page.parent / target).resolve()
            if not SCREENSHOT.fullmatch(path.name):
                found[path] = None
    return list(found)


def command_of(figure: Path) -> str:
    """The figure's `bnrun plot` line: its own chunk, else COMMANDS."""
    from bnrun.analysis.provenance import COMMAND, read

    recorded = read(figure).get(COMMAND) if figure.exists() else None
    command = recorded or COMMANDS.get(figure.relative_to(REPO).as_posix())
    if command is None:
        raise LookupError(f"{figure} records no bnrun:command and is not in scripts/figures.py's COMMANDS")
    return command


def with_output(command: str, output: Path) -> list[str]:
    """The command's arguments (after `bnrun`) with its --output replaced by `output`."""
    words = shlex.split(command)[1:]
    if "--output" in words:
        at = words.index("--output")
        del words[at:at + 2]
    return [*words, "--output", str(output)]


@contextmanager
def in_repository():
    before = Path.cwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


def bnrun(arguments: list[str], db: Path) -> str:
    """Run bnrun in-process on store `db`; its stdout, or RuntimeError with what it printed."""
    from typer.testing import CliRunner

    from bnrun.cli import app

    with in_repository():
        result = CliRunner().invoke(app, [*arguments, "--db", str(Path(db).resolve())])
    if result.exit_code != 0:
        raise RuntimeError(f"bnrun {shlex.join(arguments)} exited {result.exit_code}: {result.output.strip()}")
    return result.stdout


def draw(command: str, db: Path, output: Path | None = None) -> Path:
    """Run a figure's command on `db`, into `output` if given (else where the command says)."""
    arguments = shlex.split(command)[1:] if output is None else with_output(command, Path(output).resolve())
    bnrun(arguments, db)
    return output or REPO / with_output(command, Path())[-1]


def stale_figure(figure: Path, db: Path, scratch: Path) -> str | None:
    """Why the figure is not what its command draws from `db` now (None when it is): no provenance
    chunks, or another data digest. The command runs into `scratch`, a directory."""
    from bnrun.analysis.provenance import COMMAND, DIGEST, read

    chunks = read(figure)
    if COMMAND not in chunks or DIGEST not in chunks:
        return f"{figure.name} carries no {COMMAND} and {DIGEST} chunks"
    fresh = read(draw(chunks[COMMAND], db, Path(scratch) / figure.name))[DIGEST]
    if fresh != chunks[DIGEST]:
        return (f"{figure.name} is stale: `{chunks[COMMAND]}` now draws data {fresh[:12]}, "
                f"the figure {chunks[DIGEST][:12]}")
    return None


def blocks(page: Path) -> list[tuple[str, str]]:
    """(command, text) of every generated block of the page."""
    return [(command, text) for _, command, text in BLOCK.findall(page.read_text())]


def filled(text: str, db: Path) -> str:
    """The page's text with every block replaced by its command's output on `db`."""
    def output(match: re.Match) -> str:
        name, command = match[1], match[2]
        return f"<!-- {name}: {command} -->\n{bnrun(shlex.split(command)[1:], db)}<!-- /{name} -->\n"

    return BLOCK.sub(output, text)


def refill_blocks(db: Path, check: bool = False) -> list[str]:
    """Rewrite every page whose blocks differ from their commands' output (with `check`, only name them)."""
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = filled(text, db)
        if new != text:
            stale.append(f"{page.relative_to(REPO)}: a generated block differs from its command's output")
            if not check:
                page.write_text(new)
    return stale


def redraw_figures(db: Path) -> None:
    for figure in shown_figures():
        command = command_of(figure)
        print(f"{figure.relative_to(REPO)}: {command}", file=sys.stderr)
        draw(command, db)


def check_figures(db: Path) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return [problem for figure in shown_figures() if (problem := stale_figure(figure, db, Path(scratch)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bnrun.db", help="the store (default: the repository's)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_figures(args.db) + refill_blocks(args.db, check=True)
        print("\n".join(problems) or "every figure and block is what its command makes", file=sys.stderr)
        return 1 if problems else 0
    redraw_figures(args.db)
    for rewritten in refill_blocks(args.db):
        print(rewritten.replace("differs from", "rewritten from"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
