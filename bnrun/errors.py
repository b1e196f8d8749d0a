"""Errors bnrun reports to the user as one line (the CLI turns them into exit codes), and the
first-line rule every error message quoted from elsewhere goes through."""


class BnrunError(Exception):
    """An expected failure with a message fit for one line on stderr."""

    exit_code = 1


class UsageError(BnrunError):
    """Invalid options; nothing was touched."""

    exit_code = 2


class DataError(BnrunError):
    """Fashion-MNIST could not be found, fetched or read."""

    exit_code = 2


class StoreError(BnrunError):
    """The results store cannot be used as asked (corrupt, newer, unwritable, unknown id...)."""

    exit_code = 2


class NothingMatched(BnrunError):
    """The store holds no trial that the filters select (nothing was written)."""

    exit_code = 1


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an error's message (its type name if it has none), at most `limit` characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
