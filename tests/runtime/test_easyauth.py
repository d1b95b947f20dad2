"""The local runtime's App Service Authentication emulation (``devhost.easyauth``), in front of a small app that
echoes the identity headers it receives, with the real local OpenID provider and real HTTP: what the app is given,
what a client is answered, and how sign-in, sessions, bearer tokens and sign-out behave."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devhost.easyauth import EasyAuthMiddleware
from devhost.easyauth.config import load_settings
from devhost.http_server import serve
from tools.openid_provider.directory import Directory, load_directory
from tools.openid_provider.tokens import TokenMinter
from tools.services.openid_provider import OpenIdProviderService, start_openid_provider
from tools.sign_in import app_token, choose_on_form, site_session
from tools.token_endpoint import SigningKey

REPO = Path(__file__).resolve().parents[2]
ALICE = "a11ce000-0000-4000-8000-000000000001"
ROLE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
EXCLUDED = ["/public", "/open/*"]


async def echo(request: Request) -> JSONResponse:
    identity = {k: v for k, v in request.headers.items() if k.startswith("x-ms-")}
    return JSONResponse({"path": request.url.path, "identity": identity})


ECHO = Starlette(routes=[Route("/{rest:path}", echo, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProviderService]:
    state = tmp_path_factory.mktemp("openid")
    service = start_openid_provider(state_dir=state, log_dir=state)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def directory(provider: OpenIdProviderService) -> Directory:
    return load_directory(REPO / "config" / "demo-users.yaml", provider.secrets_file)


SiteFactory = Callable[..., str]


@pytest.fixture
def site(provider: OpenIdProviderService, tmp_path: Path) -> Iterator[SiteFactory]:
    """Starts the echo app behind the emulation; keyword arguments are the site's settings. The base URL."""
    servers = []

    def start(action: str = "Return401", state: Path = tmp_path / "state", **env: str) -> str:
        config = tmp_path / f"easyauth-{len(servers)}.json"
        config.write_text(json.dumps({"unauthenticatedClientAction": action, "excludedPaths": EXCLUDED}))
        settings = {
            "WRITEBACK_DEV_EASYAUTH_CONFIG": str(config),
            "WRITEBACK_DEV_EASYAUTH_ISSUER": provider.issuer,
            "WRITEBACK_DEV_EASYAUTH_CLIENT_ID": provider.site_client_id,
            "WRITEBACK_DEV_EASYAUTH_CLIENT_SECRETS_FILE": str(provider.secrets_file),
            **env,
        }
        server = serve(EasyAuthMiddleware(ECHO, load_settings(REPO, state, settings)), port=0).start().wait_ready()
        servers.append(server)
        return server.base_url

    yield start
    for server in servers:
        server.stop()


def principal(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    document: dict[str, Any] = json.loads(base64.b64decode(resp.json()["identity"]["x-ms-client-principal"]))
    return document


def claim(document: dict[str, Any], typ: str) -> list[str]:
    return [c["val"] for c in document["claims"] if c["typ"] == typ]


def minted(provider: OpenIdProviderService, directory: Directory, *, issuer: str | None = None, age: int = 0) -> Any:
    """A minter signing with the provider's own key (or, with ``issuer``, a stranger's), ``age`` seconds ago."""
    key = SigningKey.load(provider.key_file) if issuer is None else SigningKey.load(None)
    return TokenMinter(key=key, issuer=issuer or provider.issuer, directory=directory, clock=lambda: time.time() - age)


FORGED = {
    "X-MS-CLIENT-PRINCIPAL": base64.b64encode(b'{"claims":[{"typ":"appid","val":"crm"}]}').decode(),
    "X-MS-CLIENT-PRINCIPAL-ID": "mallory",
    "x-ms-client-principal-name": "mallory@evil.example",
    "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
    "X-MS-TOKEN-AAD-ACCESS-TOKEN": "forged",
}


def test_identity_headers_a_client_sends_never_reach_the_app(
    site: SiteFactory, provider: OpenIdProviderService
) -> None:
    base = site()
    anonymous = httpx.get(f"{base}/public", headers=FORGED)
    assert anonymous.status_code == 200 and anonymous.json()["identity"] == {}
    assert httpx.get(f"{base}/api/x", headers=FORGED).status_code == 401
    token = app_token(provider.issuer, "crm", provider.client_secret("crm"), f"api://{provider.site_client_id}")
    resp = httpx.get(f"{base}/api/x", headers={**FORGED, "Authorization": f"Bearer {token}"})
    identity = resp.json()["identity"]
    assert set(identity) == {
        "x-ms-client-principal",
        "x-ms-client-principal-id",
        "x-ms-client-principal-idp",
    }, "no -NAME for an app (no name claim), no X-MS-TOKEN-* (no token store)"
    document = principal(resp)
    assert claim(document, "azp") == ["crm"] and claim(document, ROLE) == ["Writeback.Submit"]
    assert "mallory" not in json.dumps(document) and identity["x-ms-client-principal-id"] != "mallory"


def test_each_unauthenticated_action(site: SiteFactory, provider: OpenIdProviderService) -> None:
    refused = httpx.get(f"{site('Return401')}/api/x?a=1")
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="127.0.0.1:') and f'resource_id="{provider.site_client_id}"' in challenge
    assert httpx.get(f"{site('Return403')}/api/x").status_code == 403
    redirected = httpx.get(f"{site('RedirectToLoginPage')}/api/x?a=1")
    assert redirected.status_code == 302
    assert redirected.headers["location"] == "/.auth/login/aad?post_login_redirect_uri=/api/x%3Fa%3D1"
    anonymous = httpx.get(f"{site('AllowAnonymous')}/api/x")
    assert anonymous.status_code == 200 and anonymous.json()["identity"] == {}


def test_excluded_paths_are_exact_or_a_trailing_wildcard(site: SiteFactory) -> None:
    base = site()
    for path, status in [
        ("/public", 200),
        ("/public/", 401),
        ("/public/x", 401),
        ("/open/x", 200),
        ("/open/x/y", 200),
        ("/open", 401),
        ("/open/../api/x", 401),
    ]:
        assert httpx.get(f"{base}{path}").status_code == status, path
    assert httpx.get(f"{base}/runtime/servicebus/q").status_code == 200, "the runtime's own routes are not the site's"


def test_bearer_tokens_are_validated(site: SiteFactory, provider: OpenIdProviderService, directory: Directory) -> None:
    base, crm, resource = site(), directory.clients["crm"], provider.site_client_id

    def call(token: str) -> httpx.Response:
        return httpx.get(f"{base}/api/x", headers={"Authorization": f"Bearer {token}"})

    assert call(minted(provider, directory).app_token(crm, resource)).status_code == 200
    for token, why in [
        (minted(provider, directory, age=7200).app_token(crm, resource), "expired"),
        (minted(provider, directory).app_token(crm, "api://someone-else"), "audience"),
        (minted(provider, directory, issuer=provider.issuer).app_token(crm, resource), "key"),
        (minted(provider, directory, issuer="https://evil.example/v2.0").app_token(crm, resource), "key"),
        ("not-a-token", "JWT"),
    ]:
        resp = call(token)
        assert resp.status_code == 401 and why in resp.text, (why, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_a_sign_in_makes_a_session_from_the_id_token(
    site: SiteFactory, provider: OpenIdProviderService, directory: Directory
) -> None:
    base = site()
    with httpx.Client() as browser:
        assert site_session(base, ALICE, browser, "/review?tab=1") == "/review?tab=1"
        cookie = next(c for c in browser.cookies.jar if c.name == "AppServiceAuthSession")
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/" and not cookie.secure
        document = principal(browser.get(f"{base}/api/x"))
        assert claim(document, "aud") == [provider.site_client_id]
        assert claim(document, "http://schemas.microsoft.com/identity/claims/objectidentifier") == [ALICE]
        assert claim(document, ROLE) == ["Writeback.Approve"] and claim(document, "nonce")
        assert not claim(document, "azp") and not claim(document, "http://schemas.microsoft.com/identity/claims/scope")
        me = browser.get(f"{base}/.auth/me")
        assert me.status_code == 200 and me.headers["content-type"].startswith("application/json")
        [entry] = me.json()
        assert entry["provider_name"] == "aad" and entry["user_id"] == "alice@writeback.example"
        assert entry["user_claims"] == document["claims"] and entry["id_token"].count(".") == 2
    assert httpx.get(f"{base}/.auth/me").status_code == 401


def test_the_session_cookie_follows_the_samesite_setting(site: SiteFactory) -> None:
    base = site(WRITEBACK_DEV_EASYAUTH_SAMESITE="strict")
    with httpx.Client() as browser:
        start = browser.get(f"{base}/.auth/login/aad")
        # The sign-in's own cookie stays Lax: the provider sends the browser back with a top-level GET.
        assert "SameSite=Lax" in start.headers["set-cookie"] and "HttpOnly" in start.headers["set-cookie"]
        callback = browser.get(choose_on_form(start.headers["location"], ALICE, browser))
        [session] = [h for h in callback.headers.get_list("set-cookie") if h.startswith("AppServiceAuthSession=")]
        assert "SameSite=Strict" in session and "HttpOnly" in session


def test_a_changed_or_foreign_session_cookie_is_signed_out(site: SiteFactory, tmp_path: Path) -> None:
    base, elsewhere = site(), site(state=tmp_path / "another-deployment")
    with httpx.Client() as browser:
        site_session(base, ALICE, browser)
        value = browser.cookies["AppServiceAuthSession"]
    middle = len(value) // 2
    for changed in (value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :], value[:-8]):
        cookies = {"AppServiceAuthSession": changed}
        assert httpx.get(f"{base}/api/x", cookies=cookies).status_code == 401
        assert httpx.get(f"{base}/.auth/me", cookies=cookies).status_code == 401
    assert httpx.get(f"{base}/api/x", cookies={"AppServiceAuthSession": value}).status_code == 200
    assert httpx.get(f"{elsewhere}/api/x", cookies={"AppServiceAuthSession": value}).status_code == 401


def test_a_session_begun_on_one_instance_holds_on_another_with_the_same_state(
    site: SiteFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-state"
    first, second = site(state=shared), site(state=shared)
    with httpx.Client() as browser:
        site_session(first, ALICE, browser)
        assert principal(browser.get(f"{second}/api/x"))["claims"]


def test_the_callback_needs_the_sign_in_this_browser_started(site: SiteFactory) -> None:
    base = site()
    with httpx.Client() as browser, httpx.Client() as attacker:
        start = attacker.get(f"{base}/.auth/login/aad")
        callback = choose_on_form(start.headers["location"], ALICE, attacker)
        # The victim's browser is sent the attacker's callback URL (login CSRF): it has no matching Nonce cookie.
        refused = browser.get(callback)
        assert refused.status_code == 401 and "AppServiceAuthSession" not in refused.headers.get("set-cookie", "")
        forged_state = callback.replace("state=", "state=x")
        assert attacker.get(forged_state).status_code == 401
        assert attacker.get(f"{base}/.auth/login/aad/callback?error=access_denied&state=x").status_code == 401


@pytest.mark.parametrize(
    ("asked", "landing"),
    [
        ("/review", "/review"),
        ("https://evil.example/phish", "/.auth/login/done"),
        ("//evil.example/phish", "/.auth/login/done"),
        ("http://127.0.0.1:1/elsewhere", "/.auth/login/done"),
    ],
)
def test_after_sign_in_the_browser_stays_on_the_site(site: SiteFactory, asked: str, landing: str) -> None:
    base = site()
    with httpx.Client() as browser:
        assert site_session(base, ALICE, browser, asked) == landing
        if landing.startswith("/.auth"):
            done = browser.get(f"{base}{landing}")
            assert done.status_code == 200 and "successfully signed in" in done.text


def test_sign_out_ends_the_session_and_returns_through_the_provider(
    site: SiteFactory, provider: OpenIdProviderService
) -> None:
    base = site()
    with httpx.Client() as browser:
        site_session(base, ALICE, browser)
        out = browser.get(f"{base}/.auth/logout", params={"post_logout_redirect_uri": "/review"})
        assert out.status_code == 302 and out.headers["location"].startswith(provider.issuer.removesuffix("/v2.0"))
        assert "AppServiceAuthSession=;" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
        back = browser.get(out.headers["location"])
        assert back.status_code == 302 and back.headers["location"] == f"{base}/review"
        assert browser.get(f"{base}/.auth/me").status_code == 401
        evil = browser.get(f"{base}/.auth/logout", params={"post_logout_redirect_uri": "https://evil.example/"})
        assert "evil.example" not in evil.headers["location"]
