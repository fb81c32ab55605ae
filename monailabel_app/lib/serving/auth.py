"""Bearer-token authentication: every request carries `Authorization: Bearer <token>` when the server has a token.

The token is read from a file (never from the command line, where `ps` shows it), compared in
constant time (`hmac.compare_digest`) and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lib.serving.answers import refusal

#: Shortest token accepted: 128 bits of `secrets.token_urlsafe(16)` are 22 characters.
MIN_TOKEN_CHARS = 22


def read_token(path: Path) -> str:
    """The token in `path` (surrounding white space removed), refused when too short to resist guessing."""
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(
            f"--token-file: {path} must hold one token of at least {MIN_TOKEN_CHARS} characters without spaces "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`), which only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorized(headers: Headers, token: str) -> bool:
    """Whether the request's Authorization header is `Bearer <token>`, compared in constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class BearerAuth:
    """Refuses (401) every HTTP request without the server's token; lets everything through when there is none."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401 naming the header to send."""
        if scope["type"] == "http" and self.token is not None and not authorized(Headers(scope=scope), self.token):
            answer = refusal(
                401, "Authorization: send this server's token as 'Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
