"""`python -m bnrun` runs the CLI."""

from bnrun.cli import main

main()
