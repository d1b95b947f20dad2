"""In Azure, the ``easyauth`` mode believes ``X-MS-CLIENT-PRINCIPAL`` only when it can tell App Service
Authentication is in front (``WEBSITE_AUTH_ENABLED``, which the platform sets), or when another trusted front is
declared (``WRITEBACK_TRUSTED_FRONT``). Otherwise a forged header, even beside a garbage bearer token, would be
served as any app and any role: every call is refused with a 503 problem instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.api.caller_identity import encode_easyauth_principal
from tests.fake_gateway import fake_gateway

REPO = Path(__file__).resolve().parents[2]
FORGED = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("anyone", ["Writeback.Audit", "Writeback.Operate"]),
    "Authorization": "Bearer garbage",
}


@pytest.mark.parametrize(
    ("environment", "status"),
    [
        ({}, 404),  # not in Azure (local runs): the header is believed
        ({"WEBSITE_SITE_NAME": "gw"}, 503),  # in Azure, no sign of Easy Auth
        ({"WEBSITE_SITE_NAME": "gw", "WEBSITE_AUTH_ENABLED": "False"}, 503),
        ({"WEBSITE_SITE_NAME": "gw", "WEBSITE_AUTH_ENABLED": "True"}, 404),  # Easy Auth on: believed
        ({"WEBSITE_SITE_NAME": "gw", "WRITEBACK_TRUSTED_FRONT": "true"}, 404),  # another front, declared
    ],
    ids=["local", "azure-no-easyauth", "azure-easyauth-off", "azure-easyauth-on", "azure-trusted-front"],
)
def test_easyauth_mode_believes_the_header_only_behind_a_known_front(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], status: int
) -> None:
    for name in ("WEBSITE_SITE_NAME", "WEBSITE_AUTH_ENABLED", "WRITEBACK_TRUSTED_FRONT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    answer = fake_gateway().changes_api.get_change(FORGED, "no-such-change", "http://gw")
    assert answer.status == status, answer.body
    if status == 503:
        assert answer.body["type"].endswith("easy-auth-not-verified")
