"""Small ASGI helpers for the emulation: reading a request's headers, origin and query; sending a whole response."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from urllib.parse import parse_qsl

from starlette.types import Scope, Send

Headers = list[tuple[bytes, bytes]]


def header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.lower().encode()
    return next((v.decode("latin-1") for n, v in headers if n.lower() == wanted), None)


def origin(scope: Scope, headers: Headers) -> str:
    """``scheme://host[:port]`` as the client addressed the site (its Host header)."""
    host = header(headers, "host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return f"{scope.get('scheme', 'http')}://{host}"


def query(scope: Scope) -> dict[str, str]:
    raw = bytes(scope.get("query_string", b"")).decode("latin-1")
    return dict(parse_qsl(raw, keep_blank_values=True))


async def respond(
    send: Send, status: int, body: bytes = b"", content_type: str | None = None, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Send a complete response; ``Cache-Control: no-store`` always (nothing the emulation answers may be cached)."""
    raw: Headers = [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    if content_type:
        raw.append((b"content-type", content_type.encode()))
    raw += [(name.lower().encode(), value.encode("latin-1")) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def html_page(title: str, *paragraphs: str, link: tuple[str, str] | None = None) -> bytes:
    text = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    if link is not None:
        text += f"<p><a href='{escape(link[0])}'>{escape(link[1])}</a></p>"
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{text}</body></html>\n"
    ).encode()


HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
