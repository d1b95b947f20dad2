"""The local OpenID provider's HTML: the sign-in form listing the demo people, an error page, the signed-out page.

Every value is escaped; the pages load nothing and run no script.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from tools.openid_provider.directory import User

CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title></head><body>{body}</body></html>\n"
    ).encode()


def sign_in_page(action: str, app_name: str, fields: Mapping[str, str], users: Iterable[User]) -> bytes:
    """A form that posts the authorization request back with the chosen person (``login`` = their oid)."""
    hidden = "".join(
        f"<input type='hidden' name='{escape(name)}' value='{escape(value)}'>" for name, value in fields.items()
    )
    buttons = "".join(
        f"<li><button type='submit' name='login' value='{escape(u.oid)}'>{escape(u.name)}</button> "
        f"<span>{escape(u.username)}</span> <small>{escape(', '.join(u.roles) or 'no roles')}</small></li>"
        for u in users
    )
    body = (
        f"<h1>Sign in</h1><p>to <strong>{escape(app_name)}</strong>, with the local OpenID provider "
        "(demo people, no passwords: for local runs only).</p>"
        f"<form method='post' action='{escape(action)}'>{hidden}<ul>{buttons}</ul></form>"
    )
    return _page("Sign in (local OpenID provider)", body)


def error_page(error: str, description: str) -> bytes:
    body = f"<h1>Sign-in error</h1><p><code>{escape(error)}</code></p><p>{escape(description)}</p>"
    return _page("Sign-in error (local OpenID provider)", body)


def signed_out_page() -> bytes:
    return _page("Signed out (local OpenID provider)", "<h1>Signed out</h1><p>You have signed out.</p>")
