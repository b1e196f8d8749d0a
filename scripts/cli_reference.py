"""Write docs/cli.md from `bnrun --help` and every command's `--help` (80 columns, no colour).

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 if docs/cli.md differs from what bnrun prints

Rerun it after adding or changing an option, command or help text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnrun.cli.reference import render

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs; write nothing")
    parser.add_argument("page", nargs="?", type=Path, default=PAGE, help=f"the page (default: {PAGE})")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        args.page.write_text(text)
        return 0
    if args.page.is_file() and args.page.read_text() == text:
        return 0
    print(f"{args.page} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
