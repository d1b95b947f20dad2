"""An emulation of App Service Authentication ("Easy Auth") in front of the local runtime, for
``WRITEBACK_DEV_EASYAUTH=1`` (``make run EASYAUTH=1``): sign-in through a local OpenID provider, sessions built from
ID tokens, bearer access tokens validated, ``X-MS-CLIENT-PRINCIPAL`` built as App Service builds it and client-sent
copies stripped. ``devhost.easyauth.middleware`` describes what it does per request; the README lists what it does
not do.
"""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp

from devhost.easyauth.config import enabled, load_settings
from devhost.easyauth.middleware import EasyAuthMiddleware

__all__ = ["EasyAuthMiddleware", "enabled", "protect"]


def protect(app: ASGIApp, *, app_dir: Path, state_dir: Path) -> EasyAuthMiddleware:
    """``app`` behind the emulation, configured from the environment; raises ``EasyAuthConfigError``."""
    return EasyAuthMiddleware(app, load_settings(app_dir, state_dir))
