"""Signing in as in Azure: the gateway in the local runtime (two instances) behind the App Service Authentication
emulation (``WRITEBACK_DEV_EASYAUTH=1``), with the local OpenID provider, real HTTP and headless Chromium.

Reviewers sign in through ``/.auth/login/aad`` and approve on the review page; a requester's app submits for them
with a delegated access token; nobody can forge ``X-MS-CLIENT-PRINCIPAL``; bearer tokens and session cookies are
checked as App Service checks them; ``excludedPaths`` come from ``infra/app/easyauth.json`` and are exact.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.api.caller_identity import encode_easyauth_principal
from shared.app.approvals import SelfApprovalError
from tests.e2e.browser import Tab, chromium, open_tab
from tests.e2e.conftest import Gateway, put_patient, start_gateway, stop_gateway
from tools.openid_provider.directory import Directory, load_directory
from tools.openid_provider.tokens import TokenMinter
from tools.services.openid_provider import OpenIdProviderService, start_openid_provider
from tools.sign_in import site_session, user_token
from tools.token_endpoint import SigningKey

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ALICE = "a11ce000-0000-4000-8000-000000000001"
BOB = "b0b00000-0000-4000-8000-000000000002"
RILEY = "a1e90000-0000-4000-8000-000000000003"
OLIVE = "0be70000-0000-4000-8000-000000000004"
CRM_REDIRECT = "http://127.0.0.1/crm/callback"
TERMINAL = {"completed", "planned", "rejected", "conflict", "failed", "expired", "cancelled"}
AWAITING = "/api/v1/changes?status=awaiting_approval"


@dataclass
class SignedInGateway:
    """The gateway behind the emulation, and the provider people sign in with."""

    gw: Gateway
    provider: OpenIdProviderService
    directory: Directory
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.gw.base

    def token_for(self, login: str, client: str = "crm") -> str:
        """``client`` acting for the person ``login``: a delegated access token (``scp``), through the provider's
        sign-in form (authorization code with PKCE)."""
        if (client, login) not in self._tokens:
            scope = f"api://{self.provider.site_client_id}/user_impersonation"
            secret = self.provider.client_secret(client)
            answer = user_token(self.provider.issuer, client, secret, login, scope, CRM_REDIRECT)
            self._tokens[client, login] = answer["access_token"]
        return self._tokens[client, login]

    def bearer(self, login: str = OLIVE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_for(login)}"}

    def minter(self, *, age: int = 0) -> TokenMinter:
        """Signs with the provider's own key, ``age`` seconds ago."""
        key = SigningKey.load(self.provider.key_file)
        issuer, directory = self.provider.issuer, self.directory
        return TokenMinter(key=key, issuer=issuer, directory=directory, clock=lambda: time.time() - age)

    def status(self, change_id: str) -> dict[str, Any]:
        resp = httpx.get(f"{self.gw.api}/changes/{change_id}", headers=self.bearer(), timeout=30)
        assert resp.status_code in (200, 202), resp.text
        body: dict[str, Any] = resp.json()
        return body

    def wait_for(self, change_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (body := self.status(change_id))["status"] not in statuses:
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        return body


@pytest.fixture(scope="module")
def signed_in(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedInGateway]:
    state = tmp_path_factory.mktemp("easyauth")
    provider = start_openid_provider(state_dir=state / "openid", log_dir=state)
    try:
        gw = start_gateway(
            azurite,
            token_endpoint,
            fhir_server,
            fhir_token,
            state,
            instances=2,
            WRITEBACK_DEV_EASYAUTH="1",
            WRITEBACK_DEV_EASYAUTH_ISSUER=provider.issuer,
            WRITEBACK_DEV_EASYAUTH_CLIENT_ID=provider.site_client_id,
            WRITEBACK_DEV_EASYAUTH_CLIENT_SECRETS_FILE=str(provider.secrets_file),
        )
        try:
            yield SignedInGateway(
                gw, provider, load_directory(REPO / "config" / "demo-users.yaml", provider.secrets_file)
            )
        finally:
            stop_gateway(gw)
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def name_change_for_approval(signed_in: SignedInGateway) -> tuple[str, str, str]:
    """CRM, acting for Riley with a delegated token, asks to change a Patient's name (the policy wants an approval).
    The change id, the Patient id and the new family name."""
    patient = put_patient(signed_in.gw, f"p-{uuid.uuid4().hex[:12]}")
    family = f"Signed{uuid.uuid4().hex[:6]}"
    resource = {k: v for k, v in patient.items() if k != "meta"} | {"name": [{"family": family, "given": ["Pat"]}]}
    body = {"target": "local-ehr", "operation": "update", "resource": resource, "reason": "name correction"}
    headers = {"Authorization": f"Bearer {signed_in.token_for(RILEY)}", "Idempotency-Key": str(uuid.uuid4())}
    resp = httpx.post(f"{signed_in.gw.api}/changes", json=body, headers=headers, timeout=30)
    assert resp.status_code == 202, resp.text
    change_id: str = resp.json()["changeId"]
    assert signed_in.wait_for(change_id, "awaiting_approval", *TERMINAL)["status"] == "awaiting_approval"
    requested_by = signed_in.status(change_id)["requestedBy"]
    assert (requested_by["app"], requested_by["user"]) == ("crm", RILEY)
    return change_id, patient["id"], family


def sign_in_on_the_form(tab: Tab, signed_in: SignedInGateway, person: str) -> None:
    """The browser is on the provider's sign-in form: choose ``person``, and be back on the review page."""
    page = tab.page
    page.get_by_role("button", name=person).click()
    page.wait_for_url(f"{signed_in.base}/review")
    page.wait_for_function(
        "name => document.getElementById('who').textContent.startsWith('Signed in as ' + name)", arg=person
    )


def open_review_signed_in(tab: Tab, signed_in: SignedInGateway, person: str) -> None:
    tab.page.goto(f"{signed_in.base}/review")
    tab.page.wait_for_url(f"{signed_in.provider.issuer.removesuffix('/v2.0')}/oauth2/v2.0/authorize?*")
    sign_in_on_the_form(tab, signed_in, person)


def open_change(page: Any, change_id: str) -> None:
    row = page.locator(f'[data-list="awaiting_approval"] tr[data-change-id="{change_id}"]')
    more = page.locator('[data-list="awaiting_approval"] button.more')
    page.wait_for_selector('[data-list="awaiting_approval"] table, [data-list="awaiting_approval"] .empty')
    while row.count() == 0 and more.count() > 0:
        more.click()
        page.wait_for_timeout(200)
    row.get_by_role("button", name=f"Open change {change_id}").click()
    page.wait_for_function(
        "id => document.getElementById('detail-id').textContent === id && !document.getElementById('detail').hidden",
        arg=change_id,
    )


# --- in the browser -------------------------------------------------------------------------------------------------


def test_a_signed_out_browser_is_sent_to_sign_in(signed_in: SignedInGateway, browser: Any) -> None:
    with open_tab(browser) as tab:
        tab.page.goto(f"{signed_in.base}/review")
        tab.page.wait_for_url(f"{signed_in.provider.issuer.removesuffix('/v2.0')}/oauth2/v2.0/authorize?*")
        assert tab.page.get_by_role("heading", name="Sign in").is_visible()
        for person in ("Alice Reviewer", "Bob Reviewer", "Riley Requester"):
            assert tab.page.get_by_role("button", name=person).is_visible()
        assert f"{signed_in.base}/.auth/me" in tab.urls
        assert f"{signed_in.base}/.auth/login/aad?post_login_redirect_uri=/review" in tab.urls
        assert not [u for u in tab.urls if "/api/v1/changes" in u], "nothing was asked of the API signed out"


def test_the_requester_signed_in_cannot_approve_their_own_change_whatever_the_browser_forges(
    signed_in: SignedInGateway, browser: Any, tmp_path: Path
) -> None:
    change_id, _, _ = name_change_for_approval(signed_in)
    # The browser sends, with every request, the header the local sign-in panel would build for another approver.
    forged = encode_easyauth_principal("review-portal", ["Writeback.Approve"], user_id="mallory", name="mallory")
    with open_tab(browser, {"X-MS-CLIENT-PRINCIPAL": forged}) as tab:
        page = tab.page
        open_review_signed_in(tab, signed_in, "Riley Requester")  # the forged header signed nobody in
        assert page.locator("#local-signin").is_hidden(), "under App Service Authentication the panel has no use"
        assert "Writeback.Submit" in page.locator("#who").text_content()
        open_change(page, change_id)
        page.get_by_role("button", name="Approve", exact=True).click()
        alert = page.get_by_role("alert")
        alert.wait_for()
        assert SelfApprovalError.title in alert.text_content() and "403" in alert.text_content()
        page.screenshot(path=str(tmp_path / "sign-in-self-approval.png"), full_page=True)
    body = signed_in.status(change_id)
    assert body["status"] == "awaiting_approval" and not body["approval"].get("decidedBy")


def test_reviewers_sign_in_approve_and_see_each_others_decision(
    signed_in: SignedInGateway, browser: Any, tmp_path: Path
) -> None:
    change_id, patient_id, family = name_change_for_approval(signed_in)
    with open_tab(browser) as bob, open_tab(browser) as alice:
        open_review_signed_in(bob, signed_in, "Bob Reviewer")
        open_change(bob.page, change_id)
        assert bob.page.locator("#decision-form").is_visible()

        open_review_signed_in(alice, signed_in, "Alice Reviewer")
        open_change(alice.page, change_id)
        alice.page.get_by_label("Comment (recorded with your decision)").fill("Checked against the ID card")
        alice.page.get_by_role("button", name="Approve", exact=True).click()
        alice.page.get_by_role("status").filter(has_text="Approved").wait_for()
        assert not alice.page.get_by_role("alert").is_visible()

        # Bob's page still offers the decision Alice has taken: his approval is refused, and his page then shows hers.
        bob.page.get_by_role("button", name="Approve", exact=True).click()
        bob.page.get_by_role("alert").wait_for()
        assert "409" in bob.page.get_by_role("alert").text_content()
        bob.page.get_by_role("button", name="Refresh").click()
        bob.page.wait_for_function(
            "() => document.getElementById('detail-facts').textContent.includes('approved by Alice Reviewer')"
        )
        assert ALICE in bob.page.locator("#detail-facts").text_content()
        assert bob.page.locator("#decision-form").is_hidden()
        assert bob.page.locator(f'[data-list="awaiting_approval"] tr[data-change-id="{change_id}"]').count() == 0
        bob.page.screenshot(path=str(tmp_path / "sign-in-second-reviewer.png"), full_page=True)
        for tab in (alice, bob):
            assert not [m for m in tab.errors if "Content Security Policy" in m or "page error" in m], tab.errors

    done = signed_in.wait_for(change_id, *TERMINAL)
    assert done["status"] == "completed", done
    assert done["approval"]["decidedBy"] == ALICE and done["approval"]["comment"] == "Checked against the ID card"
    assert signed_in.gw.fhir(f"Patient/{patient_id}").json()["name"][0]["family"] == family


def test_signing_out_ends_the_session(signed_in: SignedInGateway, browser: Any) -> None:
    with open_tab(browser) as tab:
        open_review_signed_in(tab, signed_in, "Bob Reviewer")
        tab.page.get_by_role("link", name="Sign out").click()
        # Signed out at the site and at the provider, back at the review page, which asks for a sign-in again.
        tab.page.wait_for_url(f"{signed_in.provider.issuer.removesuffix('/v2.0')}/oauth2/v2.0/authorize?*")
        assert tab.page.context.request.get(f"{signed_in.base}/.auth/me").status == 401


# --- over HTTP ------------------------------------------------------------------------------------------------------


def test_client_sent_principals_are_stripped(signed_in: SignedInGateway) -> None:
    forged = {"X-MS-CLIENT-PRINCIPAL": signed_in.gw.headers("crm", ["Writeback.Audit"])["X-MS-CLIENT-PRINCIPAL"]}
    refused = httpx.get(f"{signed_in.base}{AWAITING}", headers=forged, timeout=30)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    with httpx.Client(timeout=30) as nico:
        site_session(signed_in.base, "90001e00-0000-4000-8000-000000000005", nico)  # signed in, no roles
        assert nico.get(f"{signed_in.base}{AWAITING}", headers=forged).status_code == 403


def test_expired_and_foreign_audience_bearer_tokens_get_401(signed_in: SignedInGateway) -> None:
    olive, crm, site = signed_in.directory.users[OLIVE], signed_in.directory.clients["crm"], signed_in.directory.site
    scopes = ["user_impersonation"]

    def listing(token: str) -> httpx.Response:
        return httpx.get(f"{signed_in.base}{AWAITING}", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    assert listing(signed_in.minter().delegated_token(olive, crm, site.client_id, scopes)).status_code == 200
    expired = listing(signed_in.minter(age=7200).delegated_token(olive, crm, site.client_id, scopes))
    assert expired.status_code == 401 and "expired" in expired.text
    foreign = listing(signed_in.minter().delegated_token(olive, crm, "api://another-app", scopes))
    assert foreign.status_code == 401 and "audience" in foreign.text


def test_a_tampered_session_cookie_is_signed_out(signed_in: SignedInGateway) -> None:
    with httpx.Client(timeout=30) as bob:
        site_session(signed_in.base, BOB, bob)
        assert bob.get(f"{signed_in.base}{AWAITING}").status_code == 200
        value = bob.cookies["AppServiceAuthSession"]
    middle = len(value) // 2
    tampered = {"AppServiceAuthSession": value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]}
    assert httpx.get(f"{signed_in.base}{AWAITING}", cookies=tampered, timeout=30).status_code == 401
    assert httpx.get(f"{signed_in.base}/.auth/me", cookies=tampered, timeout=30).status_code == 401


def test_a_session_holds_on_every_instance(signed_in: SignedInGateway) -> None:
    instances = signed_in.gw.live_instances()
    assert len(instances) == 2
    with httpx.Client(timeout=30) as bob:
        site_session(signed_in.base, BOB, bob)
        for instance in instances:
            me = bob.get(f"{instance['url']}/.auth/me")
            assert me.status_code == 200 and me.json()[0]["user_id"] == "bob@writeback.example"
            assert bob.get(f"{instance['url']}{AWAITING}").status_code == 200


def test_excluded_paths_are_exact(signed_in: SignedInGateway) -> None:
    base = signed_in.base
    callback = httpx.post(f"{base}/api/v1/callbacks/approval", json={}, timeout=30)
    assert callback.headers["content-type"].startswith("application/problem+json"), "the app answered, anonymously"
    below = httpx.post(f"{base}/api/v1/callbacks/approval/x", json={}, timeout=30)
    assert below.status_code == 401 and "www-authenticate" in below.headers, "App Service refused: not excluded"
    assert httpx.get(f"{base}/api/v1/health", timeout=30).status_code == 200
    assert httpx.get(f"{base}/review", timeout=30).status_code == 200
    assert httpx.get(f"{base}/review/assets/review.js", timeout=30).status_code == 200
    assert httpx.get(f"{base}/review/other", timeout=30).status_code == 401
    assert httpx.get(f"{base}/api/v1/changes", timeout=30).status_code == 401


@pytest.mark.parametrize(
    ("asked", "landing"),
    [
        ("/review", "/review"),
        ("https://evil.example/review", "/.auth/login/done"),
        ("//evil.example/review", "/.auth/login/done"),
    ],
)
def test_sign_in_never_sends_the_browser_off_the_site(signed_in: SignedInGateway, asked: str, landing: str) -> None:
    with httpx.Client(timeout=30) as browser:
        assert site_session(signed_in.base, ALICE, browser, asked) == landing
