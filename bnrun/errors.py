"""Errors bnrun reports to the user as one line (the CLI turns them into exit codes)."""


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
