"""The command line: the Typer app (`commands`), option parsing into requests (`options`), what
each command does (`actions`) and the terminal tables (`views`)."""

from bnrun.cli.commands import app, main

__all__ = ["app", "main"]
