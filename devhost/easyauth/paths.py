"""Which requests skip authentication (``excludedPaths``), and where a sign-in or sign-out may send the browser.

``excludedPaths`` (learn.microsoft.com/azure/app-service/configure-authentication-file-based; the matching rules
are in MicrosoftDocs/azure-docs issue 86514): an entry is an exact path, or ends in ``/*`` and then covers every
path below it. No other wildcard exists: ``/api/*/health`` is not a pattern, and such an entry is refused here
rather than silently matching nothing. The case of paths is not documented; the emulation compares without case,
as the Functions host routes. A path with ``.`` or ``..`` segments, or an empty segment, is never excluded: it is
not the path a client names, whatever the router later makes of it.

Redirects after ``/.auth/login/aad`` and ``/.auth/logout`` (``post_login_redirect_uri``,
``post_logout_redirect_uri``; learn.microsoft.com/azure/app-service/configure-authentication-customize-sign-in-out):
the site's own paths only, or an absolute URL on the site's own origin. App Service also accepts the URLs listed in
``allowedExternalRedirectUrls``; the deployment lists none, so neither does the emulation. Anything else is dropped
(the sign-in ends on ``/.auth/login/done``), so no link through the site can send a person elsewhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from devhost.easyauth.config import EasyAuthConfigError


def check_excluded_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if "*" in path.removesuffix("/*"):
            raise EasyAuthConfigError(f"excludedPaths: {path!r}: App Service matches exact paths or a trailing /* only")
    return paths


def _plain(path: str) -> bool:
    if not path.startswith("/"):
        return False
    *inner, last = path.split("/")[1:]
    return all(s not in ("", ".", "..") for s in inner) and last not in (".", "..")


def is_excluded(path: str, excluded: tuple[str, ...]) -> bool:
    """Whether a request for ``path`` (decoded as the router sees it) skips authentication."""
    if not _plain(path):
        return False
    wanted = path.lower()
    for entry in excluded:
        entry = entry.lower()
        if entry.endswith("/*"):
            if wanted.startswith(entry[:-1]):
                return True
        elif wanted == entry:
            return True
    return False


def safe_redirect(target: str | None, origin: str) -> str | None:
    """``target`` when it stays on the site (a path, or a URL on ``origin``), else None."""
    if not target or any(ord(c) < 0x20 or c in "\\\x7f" for c in target):
        return None
    if target.startswith("/"):
        return None if target.startswith("//") else target
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    return target if f"{parts.scheme}://{parts.netloc}".lower() == origin.lower() else None
