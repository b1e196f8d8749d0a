"""`bnrun ui`: the read-only view served by uvicorn, on this machine only unless asked otherwise."""

from __future__ import annotations

from collections.abc import Callable

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str) -> str | None:
    """The line printed when the view listens beyond this machine; None for a loopback address."""
    if host in LOCAL_HOSTS:
        return None
    return f"listening on {host}: anyone who can reach this machine on the network can read the store"


def serve(db: str | None, host: str, port: int, say: Callable[[str], None]) -> None:
    """Check the store, then serve it until interrupted (`say` prints the notices)."""
    import uvicorn

    from bnrun.web.app import create_app

    app = create_app(db)
    warning = exposure_warning(host)
    if warning:
        say(warning)
    say(f"serving the store read-only at http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
