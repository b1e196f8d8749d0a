"""`bnrun ui`: the read-only view served by uvicorn, on this machine only unless asked otherwise,
behind the `Host` check and, beyond loopback, a token (`access.py`)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from bnrun.errors import UsageError, first_line
from bnrun.web.access import Access, access_for, is_loopback


def exposure_warning(host: str, access: Access) -> str | None:
    """The line printed when the view listens beyond this machine; None for a loopback address."""
    if is_loopback(host):
        return None
    if access.token is None:
        return f"listening on {host} without a token (--no-token): anyone who can reach this machine can read the store"
    return f"listening on {host}: only requests with the token below (or its cookie) are answered"


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or UsageError in one line (a busy port, an address not of this
    machine), before anything is printed or served."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host.strip("[]"), port))
        listener.listen(128)
    except (OSError, OverflowError) as error:
        why = getattr(error, "strerror", None) or first_line(error)
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({why})") from None
    return listener


def url(host: str, port: int, access: Access) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={access.token}" if access.token else "")


def serve(db: str | None, host: str, port: int, say: Callable[[str], None], allowed_hosts: tuple[str, ...] = (),
          token: str | None = None, require_token: bool | None = None) -> None:
    """Check the store, bind, then serve it until interrupted (`say` prints the notices)."""
    import uvicorn

    from bnrun.web.app import create_app

    access = access_for(host, allowed_hosts, token, require_token)
    app = create_app(db, access)
    listener = bound_socket(host, port)
    warning = exposure_warning(host, access)
    if warning:
        say(warning)
    say(f"serving the store read-only at {url(host, port, access)} (Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listener])
