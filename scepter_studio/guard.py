"""The Studio's door: loopback by default; any other address needs a token, which every
request must then carry (query `?token=`, then a cookie; or an `Authorization: Bearer` or
`X-Scepter-Token` header). Request bodies (uploads) are size-limited. Light to import, so a
refused `scepter studio` says so at once."""
from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from .paths import StudioError

COOKIE = 'scepter_studio_token'
DEFAULT_MAX_UPLOAD = 50 * 2 ** 20  # bytes


def is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise StudioError(f"--host {host}: serving beyond this machine needs --token TOKEN "
                          f"(every request must then carry it)")
    if token is not None and len(token) < 8:
        raise StudioError('--token: use at least 8 characters')


def _request_token(scope_headers: dict[str, str], query: dict[str, str]) -> str | None:
    auth = scope_headers.get('authorization', '')
    if auth.lower().startswith('bearer '):
        return auth[7:].strip()
    if scope_headers.get('x-scepter-token'):
        return scope_headers['x-scepter-token']
    if query.get('token'):
        return query['token']
    cookies = dict(part.strip().split('=', 1) for part in scope_headers.get('cookie', '').split(';') if '=' in part)
    return cookies.get(COOKIE)


class Guard:
    """ASGI middleware: the token check (401 without, 403 when wrong) and the body size limit."""

    def __init__(self, app: Any, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope['type'] not in ('http', 'websocket'):
            return await self.app(scope, receive, send)
        from starlette.requests import HTTPConnection
        from starlette.responses import PlainTextResponse
        conn = HTTPConnection(scope)
        headers = {k.lower(): v for k, v in conn.headers.items()}
        given = None
        if self.token:
            given = _request_token(headers, dict(conn.query_params))
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                status = 401 if given is None else 403
                if scope['type'] == 'websocket':
                    return await send({'type': 'websocket.close', 'code': 1008})
                return await PlainTextResponse('scepter studio: a valid token is required\n', status)(
                    scope, receive, send)
        length = headers.get('content-length')
        if length and length.isdigit() and int(length) > self.max_body:
            return await PlainTextResponse(f'scepter studio: request body over {self.max_body} bytes\n', 413)(
                scope, receive, send)
        if self.token and conn.query_params.get('token') and scope['type'] == 'http':
            return await self.app(scope, receive, _with_cookie(send, self.token))
        return await self.app(scope, receive, send)


def _with_cookie(send: Any, token: str) -> Any:
    """Remember a token given in the URL as a cookie, so the page's own requests carry it."""
    async def wrapped(message: dict) -> None:
        if message['type'] == 'http.response.start':
            cookie = f'{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict'
            message = {**message, 'headers': [*message.get('headers', []), (b'set-cookie', cookie.encode())]}
        await send(message)
    return wrapped
