"""The approvers' review page (``GET /review``) in headless Chromium against the gateway in the local runtime.

Chromium comes from the distribution (``apt-get install chromium``), driven by Python ``playwright``; nothing is
downloaded (``tests/e2e/browser.py``). Here the gateway runs without the App Service Authentication emulation, so the
page's "local sign-in" panel identifies the reviewer; ``test_sign_in.py`` signs in through the emulation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.api.caller_identity import encode_easyauth_principal
from shared.app.approvals import SelfApprovalError
from tests.e2e.browser import Tab, chromium, open_tab
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

APPROVER = {"app": "review-portal", "user": "approver-9", "roles": "Writeback.Approve"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    with open_tab(browser) as opened:
        yield opened


def sign_in(page: Any, app: str, user: str, roles: str) -> None:
    """Use the page's local sign-in panel, as a developer would."""
    if not page.locator("#local-signin").evaluate("d => d.open"):
        page.locator("#local-signin summary").click()
    page.get_by_label("App id").fill(app)
    page.get_by_label("User id").fill(user)
    page.get_by_label("Roles (comma-separated)").fill(roles)
    page.get_by_role("button", name="Sign in locally").click()
    page.wait_for_function(
        "who => document.getElementById('who').textContent.includes(who)", arg=f"as {user} via {app}"
    )
    page.wait_for_load_state("networkidle")  # the lists, reloaded for the new identity


def change_row(page: Any, status: str, change_id: str) -> Any:
    """The change's row in one list, asking for further pages while it is not on the ones shown."""
    row = page.locator(f'[data-list="{status}"] tr[data-change-id="{change_id}"]')
    more = page.locator(f'[data-list="{status}"] button.more')
    page.wait_for_selector(f'[data-list="{status}"] table, [data-list="{status}"] .empty')
    while row.count() == 0 and more.count() > 0:
        more.click()
        page.wait_for_timeout(200)
    row.wait_for()
    return row


def conflicting_change(gateway: Gateway) -> str:
    """A change that ends in ``conflict``: the target's telecom moved on since the caller's base version."""
    stored = gateway.fhir_put(
        {"resourceType": "Patient", "id": f"p-{uuid.uuid4().hex[:12]}", "telecom": [{"system": "phone", "value": "1"}]}
    ).json()
    moved = gateway.fhir_put({**stored, "telecom": [{"system": "phone", "value": "2"}]})
    assert moved.status_code == 200, moved.text
    resource = {k: v for k, v in stored.items() if k != "meta"}
    resource["telecom"] = [{"system": "phone", "value": "3"}]
    body = {"target": "local-ehr", "operation": "update", "resource": resource}
    resp = gateway.submit({**body, "baseVersion": stored["meta"]["versionId"]})
    assert resp.status_code == 202, resp.text
    change_id: str = resp.json()["changeId"]
    assert gateway.wait(change_id)["status"] == "conflict"
    return change_id


def test_review_page_is_served_with_strict_headers(gateway: Gateway) -> None:
    for path, content_type in [
        ("/review", "text/html"),
        ("/review/assets/review.js", "text/javascript"),
        ("/review/assets/review.css", "text/css"),
    ]:
        resp = httpx.get(f"{gateway.base}{path}", timeout=10)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers["Content-Type"].startswith(content_type)
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = httpx.get(f"{gateway.base}/review", timeout=10).text
    assert "<script>" not in html and "http://" not in html and "https://" not in html  # no inline script, no CDN
    for name in ("../review_page.py", "index.html", "nope.js", "%2e%2e%2freview_page.py"):
        assert httpx.get(f"{gateway.base}/review/assets/{name}", timeout=10).status_code == 404


def test_approver_reviews_and_approves_a_name_change_in_the_browser(
    gateway: Gateway, patient: dict[str, Any], tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    started = time.monotonic()
    family = f"Reviewed{uuid.uuid4().hex[:6]}"
    resource = {k: v for k, v in patient.items() if k != "meta"}
    resource["name"] = [{"family": family, "given": ["Pat"]}]
    resp = gateway.submit(
        {"target": "local-ehr", "operation": "update", "resource": resource, "reason": "name correction"},
        app="crm",
        user="user-1",
    )
    assert resp.status_code == 202, resp.text
    change_id = resp.json()["changeId"]
    gateway.wait_for_status(change_id, "awaiting_approval")
    conflict_id = conflicting_change(gateway)

    page.goto(f"{gateway.base}/review")
    assert page.title() == "Write-back review"
    assert page.locator("#local-signin").evaluate("d => d.open")  # loopback and not signed in: the panel is open

    # The requester, even holding the Approve role, cannot approve their own change: the page shows the problem.
    sign_in(page, "crm", "user-1", "Writeback.Approve")
    change_row(page, "awaiting_approval", change_id).get_by_role("button", name=f"Open change {change_id}").click()
    page.get_by_role("button", name="Approve", exact=True).click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert SelfApprovalError.title in alert.text_content()
    assert "403" in alert.text_content()
    page.screenshot(path=str(tmp_path / "review-self-approval.png"), full_page=True)
    assert gateway.wait_for_status(change_id, "awaiting_approval")

    # An approver signs in locally; the page sends the same header encode_easyauth_principal builds.
    sign_in(page, **APPROVER)
    stored = page.evaluate("JSON.parse(sessionStorage.getItem('writeback.review.principal')).header")
    assert stored == encode_easyauth_principal(
        "review-portal", ["Writeback.Approve"], user_id="approver-9", name="approver-9"
    )

    row = change_row(page, "awaiting_approval", change_id)
    assert f"Patient/{patient['id']}" in row.text_content()
    assert "user-1 via crm" in row.text_content()
    assert "Patient.name" in row.text_content()
    with page.expect_response(lambda r: r.url.endswith(f"/api/v1/changes/{change_id}")):
        row.get_by_role("button", name=f"Open change {change_id}").click()
    detail = page.locator("#detail")
    page.wait_for_function(
        "id => document.getElementById('detail-id').textContent === id && !document.getElementById('detail').hidden",
        arg=change_id,
    )
    assert page.locator("#detail-paths").text_content().strip() == "Patient.name"
    diff_text = page.locator("#detail-diff").text_content()
    assert "/name" in diff_text and family in diff_text
    assert "Patient.name" in page.locator("#detail-reasons").text_content()
    assert "awaiting_approval" in detail.locator("#detail-facts").text_content()
    page.get_by_label("Comment (recorded with your decision)").fill("Checked against the ID card")
    page.screenshot(path=str(tmp_path / "review-before-approve.png"), full_page=True)

    page.get_by_role("button", name="Approve", exact=True).click()
    page.get_by_role("status").filter(has_text="Approved").wait_for()
    assert not page.get_by_role("alert").is_visible()
    # The page refreshed after the decision: the change has left the awaiting list and shows its new state.
    assert page.locator(f'[data-list="awaiting_approval"] tr[data-change-id="{change_id}"]').count() == 0
    assert "awaiting_approval" not in page.locator("#detail-facts").text_content()
    assert page.locator("#decision-form").is_hidden()
    page.screenshot(path=str(tmp_path / "review-after-approve.png"), full_page=True)

    done = gateway.wait(change_id)
    assert done["status"] == "completed", done
    assert done["approval"]["decidedBy"] == "approver-9"
    assert done["approval"]["comment"] == "Checked against the ID card"  # what the page sent
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"][0]["family"] == family

    # A conflict is listed with the overlapping path; it shows its problem and offers no decision.
    row = change_row(page, "conflict", conflict_id)
    assert "Patient.telecom" in row.text_content()
    row.get_by_role("button", name=f"Open change {conflict_id}").click()
    page.wait_for_function("id => document.getElementById('detail-id').textContent === id", arg=conflict_id)
    page.locator("#detail-problem").wait_for()
    assert "changed since the base version" in page.locator("#detail-problem").text_content()
    assert page.locator("#decision-form").is_hidden()
    # The approver discards it from the page.
    page.get_by_role("button", name="Discard").click()
    page.wait_for_function("() => document.getElementById('message').textContent.startsWith('Discarded')")
    assert gateway.wait(conflict_id)["status"] == "cancelled"

    # No PHI went into a URL; nothing broke the CSP (no inline script, no HTML sinks under Trusted Types).
    assert tab.urls and not [u for u in tab.urls if family in u]
    assert not [m for m in tab.errors if "Content Security Policy" in m or "page error" in m], tab.errors
    print(f"browser scenario took {time.monotonic() - started:.1f} s; screenshots in {tmp_path}")
