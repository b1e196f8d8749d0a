"""bnrun: an experiment runner for a from-scratch Batch Normalization on Fashion-MNIST."""

__version__ = "0.1.0"


def load(db: str | None = None):
    """The store's results for a notebook (bnrun.requests.notebook.Results): `.runs(where=...)`, `.epochs(ids)`."""
    from bnrun.requests.notebook import Results

    return Results(db)
