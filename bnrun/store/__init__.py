"""The results store: every trial, epoch, checkpoint and evaluation, in SQLite by default. The
package exports `Store` and the plain records it takes and returns (`records.__all__`)."""

from bnrun.store import records
from bnrun.store.records import *  # noqa: F403 (the records are the store's vocabulary, listed once)
from bnrun.store.storage import Store

__all__ = ["Store", *records.__all__]
