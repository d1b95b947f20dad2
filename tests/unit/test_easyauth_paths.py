"""The App Service Authentication emulation's path rules: ``excludedPaths`` as App Service documents them (an exact
path, or a trailing ``/*``), read from the one file the Bicep loads too; and redirects that never leave the site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.easyauth.config import EasyAuthConfigError, load_site_config
from devhost.easyauth.paths import check_excluded_paths, is_excluded, safe_redirect

REPO = Path(__file__).resolve().parents[2]
SITE = load_site_config(REPO / "infra" / "app" / "easyauth.json")
ORIGIN = "http://127.0.0.1:7071"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/callbacks/approval",
        "/API/V1/Callbacks/Approval",  # the host routes without case, and so does the emulation
        "/review",
        "/review/assets/review.js",
        "/review/assets/",
    ],
)
def test_the_deployments_excluded_paths_skip_authentication(path: str) -> None:
    assert SITE.unauthenticated_action == "Return401"
    assert is_excluded(path, SITE.excluded_paths)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/callbacks/approval/x",  # exact means exact: nothing below it
        "/api/v1/callbacks/approval/",
        "/api/v1/callbacks",
        "/api/v1/health/x",
        "/review/",
        "/reviewer",
        "/review/assets",  # /* covers what is below the folder, not the folder's own path
        "/review/assets/../../api/v1/changes",
        "/review/assets/./x/../../../api/v1/changes",
        "/api/v1//health",
        "/api/v1/changes",
        "/",
    ],
)
def test_other_paths_need_authentication(path: str) -> None:
    assert not is_excluded(path, SITE.excluded_paths)


def test_a_wildcard_inside_a_path_is_refused_as_app_service_has_none(tmp_path: Path) -> None:
    assert check_excluded_paths(("/a/*", "/b")) == ("/a/*", "/b")
    with pytest.raises(EasyAuthConfigError, match="trailing"):
        check_excluded_paths(("/api/*/health",))
    bad = tmp_path / "easyauth.json"
    bad.write_text(json.dumps({"unauthenticatedClientAction": "Return404", "excludedPaths": []}))
    with pytest.raises(EasyAuthConfigError, match="unauthenticatedClientAction"):
        load_site_config(bad)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/review", "/review"),
        ("/review?x=1#top", "/review?x=1#top"),
        (f"{ORIGIN}/review", f"{ORIGIN}/review"),
        ("HTTP://127.0.0.1:7071/review", "HTTP://127.0.0.1:7071/review"),
        ("https://evil.example/phish", None),
        ("//evil.example/phish", None),
        ("/\\evil.example", None),
        ("http://127.0.0.1:7072/review", None),  # another port is another site
        ("http://127.0.0.1:7071@evil.example/", None),
        ("javascript:alert(1)", None),
        ("/review\r\nSet-Cookie: x=1", None),
        ("review", None),
        ("", None),
        (None, None),
    ],
)
def test_redirects_stay_on_the_site(target: str | None, expected: str | None) -> None:
    assert safe_redirect(target, ORIGIN) == expected
