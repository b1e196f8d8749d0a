"""Who may read the view: the `Host` check against DNS rebinding, and the token beyond loopback.

A page on another site can rebind its own name to 127.0.0.1 and read whatever a local server
answers; the browser then sends that site's name as `Host`. So the view answers only the names it
is served under: by default those of the address it is bound to (`localhost`, `127.0.0.1`, `[::1]`
on loopback; an address given with --host, with this machine's names when that is every
interface), plus `--allowed-hosts`; any IP literal is an address the user typed, never a rebound
name. Bound beyond loopback it also asks for a token, as Jupyter does: the printed URL carries it
once (`?token=`), and the browser keeps it in a cookie. Both are checked before any route runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
TOKEN_PARAMETER = "token"
TOKEN_COOKIE = "bnrun_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether a bind address or Host name is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Access:
    """The names the view answers to (`*` for any) and the token it asks for (None: none)."""

    hosts: tuple[str, ...] = LOOPBACK_NAMES
    token: str | None = None

    def host_allowed(self, host_header: str) -> bool:
        name = host_name(host_header)
        return bool(name) and ("*" in self.hosts or name in self.hosts or is_ip_literal(name))


def access_for(bind: str, allowed_hosts: tuple[str, ...] = (), token: str | None = None,
               require_token: bool | None = None) -> Access:
    """The access rule of a view bound to `bind`: its names plus `allowed_hosts`; a token (the given one,
    or a new one) unless the view is on loopback or `require_token` is False."""
    names = set(LOOPBACK_NAMES) | {name.lower() for name in allowed_hosts}
    if bind in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(bind.strip("[]").lower())
    wanted = (not is_loopback(bind)) if require_token is None else require_token
    return Access(tuple(sorted(names)), (token or new_token()) if wanted or token else None)


def host_name(host_header: str) -> str:
    """The name in a Host header, lower case, without the port or an IPv6 literal's brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessMiddleware:
    """ASGI middleware: a request whose Host is not allowed gets 400, one without the token 401, before
    any route; a request with the right `?token=` gets the cookie that carries the token from then on."""

    def __init__(self, app: Callable, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if not self.access.host_allowed(headers.get("host", "")):
            await refuse(send, 400, "bnrun ui: this view does not answer to that host name (DNS rebinding?); "
                                    "serve it with --allowed-hosts NAME to allow one")
            return
        token = self.access.token
        if token is None:
            await self.app(scope, receive, send)
            return
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAMETER, [""])[0]
        if given and hmac.compare_digest(given, token):
            await self.app(scope, receive, with_cookie(send, token))
        elif hmac.compare_digest(cookie_token(headers.get("cookie", "")), token):
            await self.app(scope, receive, send)
        else:
            await refuse(send, 401, "bnrun ui: this view asks for its token: open the URL that bnrun ui printed "
                                    "(…/?token=…)")


def cookie_token(header: str) -> str:
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header carries no token
        return ""
    morsel = cookies.get(TOKEN_COOKIE)
    return morsel.value if morsel else ""


def with_cookie(send: Send, token: str) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
        await send(message)

    return sending


async def refuse(send: Send, status: int, line: str) -> None:
    body = (line + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
