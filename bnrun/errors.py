"""Errors bnrun reports to the user as one line (the CLI turns them into exit codes), and the
first-line rule every error message quoted from elsewhere goes through."""


import contextlib
import difflib
from collections.abc import Iterable, Iterator
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Every command's exit status, declared once: docs/cli.md's table is rendered from it, and each
    error class below carries its code."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOTHING_MATCHED = 3
    INTERRUPTED = 130


EXIT_MEANINGS = {
    ExitCode.OK: "success (reproduce: the trial is bit-identical)",
    ExitCode.FAILED: "a trial failed or diverged (reproduce: the trial differs)",
    ExitCode.USAGE: "bad input, or an unusable store or data set: one line says what; nothing was written",
    ExitCode.NOTHING_MATCHED: "the selection is empty: no stored run matches the filters or ids",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); a running trial is stored as interrupted",
}


class BnrunError(Exception):
    """An expected failure with a message fit for one line on stderr."""

    exit_code = ExitCode.FAILED


class UsageError(BnrunError):
    """Invalid options; nothing was touched."""

    exit_code = ExitCode.USAGE


class DataError(BnrunError):
    """Fashion-MNIST could not be found, fetched or read."""

    exit_code = ExitCode.USAGE


class StoreError(BnrunError):
    """The results store cannot be used as asked (corrupt, newer, unwritable, unknown id...)."""

    exit_code = ExitCode.USAGE


class RunNotFound(StoreError):
    """A run id that names no stored run (an id out of the store's range included)."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing  # the ids asked for, as given: what the web view names, without the store's path


class NothingMatched(BnrunError):
    """The store holds no trial that the filters select (nothing was written)."""

    exit_code = ExitCode.NOTHING_MATCHED


LISTED_CHOICES = 100  # the longest "choose from ..." line worth printing; past it the line points to a listing


def unknown_choice(what: str, given: str, choices: Iterable[str], noun: str = "option",
                   listed_in: str | None = None) -> str:
    """"--where: unknown option 'lrr'; did you mean lr?" where a choice is close to `given`, else every choice
    named, unless that line would be long and `listed_in` says where the choices are listed: a slip gets a line
    that fits, a guess gets the list or where to find it."""
    names = [str(choice) for choice in choices]
    close = difflib.get_close_matches(given, names, n=2, cutoff=0.6)
    if close:
        return f"{what}: unknown {noun} {given!r}; did you mean {' or '.join(close)}?"
    every = f"{what}: unknown {noun} {given!r}; choose from {', '.join(names)}"
    if listed_in is None or len(every) <= LISTED_CHOICES:
        return every
    return f"{what}: unknown {noun} {given!r}; {listed_in}"


def printable(text: str) -> str:
    """`text` with every control, format or line-separator character escaped (\\x1e, \\u2028...): a message
    that quotes the user's input stays one line, whatever that input held."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an error's message (its type name if it has none), at most `limit` characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


@contextlib.contextmanager
def writing(path: Path, option: str = "--output") -> Iterator[Path]:
    """Where every command writes a file: whatever stops the write (a missing directory, a file where a
    directory is needed, an unwritable place, a full disk) one UsageError line naming the option. A missing
    directory is not made: a mistyped path should not grow a tree of directories."""
    parent = path.parent
    if not parent.is_dir():
        why = "a file is in the way of a directory on the path" if parent.exists() else f"no directory {parent}"
        raise UsageError(f"{option} {path}: cannot write ({why})")
    try:
        yield path
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{option} {path}: cannot write (a file is in the way of a directory on the path)") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write ({error.strerror or first_line(error)})") from None
