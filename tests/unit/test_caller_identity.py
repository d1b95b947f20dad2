"""Caller identity without a network: Easy Auth header variants and refusals, role checks, mode dispatch, audit."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from shared.api.caller_identity import (
    AUDIT_LOGGER,
    OBJECT_ID_CLAIM_URI,
    ROLE_APPROVE,
    ROLE_AUDIT,
    ROLE_CLAIM_URI,
    ROLE_OPERATE,
    ROLE_SUBMIT,
    SCOPE_CLAIM_URI,
    Authenticator,
    JwtValidator,
    encode_easyauth_principal,
    principal_from_easyauth,
    require_role,
)
from shared.core.errors import ConfigurationError, ForbiddenError, UnauthenticatedError
from shared.core.models import Principal

APP = "0f3c2a1e-aaaa-4bbb-8ccc-111122223333"
USER = "5b5450db-eb26-4c1a-981c-ba1d25f0483d"
# Chosen so that the standard base64 of the document below has '+', '/' and padding, making every variant differ.
AWKWARD_NAME = "Jane Roe ~~~~>?"


def b64(document: Any, *, urlsafe: bool = False, padded: bool = True) -> str:
    raw = json.dumps(document).encode()
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if padded else text.rstrip("=")


def claims_doc(*claims: tuple[str, str], role_typ: str = "roles", name_typ: str = "name") -> dict[str, Any]:
    return {
        "auth_typ": "aad",
        "name_typ": name_typ,
        "role_typ": role_typ,
        "claims": [{"typ": t, "val": v} for t, v in claims],
    }


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT_LOGGER]


@pytest.fixture(autouse=True)
def _capture_audit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=AUDIT_LOGGER)


# --- Easy Auth: accepted -------------------------------------------------------------------------------------


def test_role_names() -> None:
    assert (ROLE_SUBMIT, ROLE_APPROVE, ROLE_OPERATE, ROLE_AUDIT) == (
        "Writeback.Submit",
        "Writeback.Approve",
        "Writeback.Operate",
        "Writeback.Audit",
    )


def test_encoded_user_principal_round_trips() -> None:
    header = encode_easyauth_principal(APP, [ROLE_SUBMIT, ROLE_APPROVE], user_id=USER, name="Dr Jane Roe")

    principal = principal_from_easyauth(header)

    assert principal == Principal(
        app_id=APP, user_id=USER, display_name="Dr Jane Roe", roles=[ROLE_SUBMIT, ROLE_APPROVE], auth_type="easyauth"
    )


def test_encoded_app_principal_has_no_user() -> None:
    principal = principal_from_easyauth(encode_easyauth_principal("crm", [ROLE_SUBMIT]))

    assert (principal.app_id, principal.user_id, principal.display_name, principal.roles) == (
        "crm",
        None,
        None,
        [ROLE_SUBMIT],
    )
    assert principal.auth_type == "easyauth"


def test_encoded_header_looks_like_app_service() -> None:
    document = json.loads(base64.b64decode(encode_easyauth_principal(APP, [ROLE_SUBMIT], user_id=USER)))

    assert document["auth_typ"] == "aad"
    assert document["role_typ"] == ROLE_CLAIM_URI
    assert {"typ": "appid", "val": APP} in document["claims"]
    assert {"typ": OBJECT_ID_CLAIM_URI, "val": USER} in document["claims"]


@pytest.mark.parametrize(
    ("urlsafe", "padded"), [(False, True), (False, False), (True, True), (True, False)], ids=lambda v: str(v)
)
def test_base64_variants(urlsafe: bool, padded: bool) -> None:
    document = claims_doc(("appid", "crm-app"), ("name", AWKWARD_NAME))
    standard = b64(document)
    assert "+" in standard and "/" in standard and standard.endswith("=")

    principal = principal_from_easyauth(b64(document, urlsafe=urlsafe, padded=padded))

    assert principal.app_id == "crm-app"
    assert principal.display_name == AWKWARD_NAME


def test_header_with_surrounding_whitespace_is_accepted() -> None:
    header = encode_easyauth_principal("crm")
    assert principal_from_easyauth(f"  {header[:10]}\n{header[10:]} ").app_id == "crm"


@pytest.mark.parametrize("claim", ["appid", "azp"])
def test_app_id_from_appid_or_azp(claim: str) -> None:
    assert principal_from_easyauth(b64(claims_doc((claim, APP)))).app_id == APP


def test_uri_claim_types_as_app_service_maps_them() -> None:
    document = claims_doc(
        ("azp", APP),
        (OBJECT_ID_CLAIM_URI, USER),
        (SCOPE_CLAIM_URI, "user_impersonation"),
        (ROLE_CLAIM_URI, ROLE_SUBMIT),
        ("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress", "jane@example.org"),
        role_typ=ROLE_CLAIM_URI,
        name_typ="http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    )

    principal = principal_from_easyauth(b64(document))

    assert (principal.app_id, principal.user_id, principal.roles) == (APP, USER, [ROLE_SUBMIT])
    assert principal.display_name == "jane@example.org"


def test_short_claim_types() -> None:
    document = claims_doc(("appid", APP), ("oid", USER), ("scp", "access"), ("name", "Jane"), ("roles", ROLE_AUDIT))

    principal = principal_from_easyauth(b64(document))

    assert (principal.user_id, principal.display_name, principal.roles) == (USER, "Jane", [ROLE_AUDIT])


def test_name_claim_wins_over_name_typ() -> None:
    document = claims_doc(("appid", APP), ("upn", "jane@example.org"), ("name", "Jane Roe"), name_typ="upn")
    assert principal_from_easyauth(b64(document)).display_name == "Jane Roe"


def test_multiple_roles_in_order_without_duplicates() -> None:
    document = claims_doc(
        ("appid", APP),
        ("roles", ROLE_SUBMIT),
        (ROLE_CLAIM_URI, ROLE_APPROVE),
        ("roles", ROLE_SUBMIT),
        ("roles", ROLE_OPERATE),
        ("groups", "not-a-role"),
    )
    assert principal_from_easyauth(b64(document)).roles == [ROLE_SUBMIT, ROLE_APPROVE, ROLE_OPERATE]


def test_custom_role_typ() -> None:
    document = claims_doc(
        ("appid", APP), ("urn:example:role", ROLE_SUBMIT), ("urn:example:role", ROLE_AUDIT), role_typ="urn:example:role"
    )
    assert principal_from_easyauth(b64(document)).roles == [ROLE_SUBMIT, ROLE_AUDIT]


def test_no_roles_is_an_empty_list() -> None:
    assert principal_from_easyauth(b64(claims_doc(("appid", APP)))).roles == []


def test_app_only_caller_object_id_is_not_a_user() -> None:
    # App-only tokens carry the service principal's object id; it must not pass for a signed-in user.
    document = claims_doc(("appid", APP), (OBJECT_ID_CLAIM_URI, "sp-object-id"), ("roles", ROLE_SUBMIT))
    assert principal_from_easyauth(b64(document)).user_id is None


@pytest.mark.parametrize(("idtyp", "expected"), [("user", USER), ("app", None)])
def test_idtyp_decides_user_or_app(idtyp: str, expected: str | None) -> None:
    document = claims_doc(("appid", APP), ("oid", USER), ("idtyp", idtyp))
    assert principal_from_easyauth(b64(document)).user_id == expected


def test_id_and_name_headers_are_fallbacks_for_a_user() -> None:
    document = claims_doc(("appid", APP), ("scp", "access"))

    user = principal_from_easyauth(b64(document), principal_id=USER, principal_name="jane@example.org")
    app = principal_from_easyauth(b64(claims_doc(("appid", APP))), principal_id="sp", principal_name="sp-name")

    assert (user.user_id, user.display_name) == (USER, "jane@example.org")
    assert (app.user_id, app.display_name) == (None, None)


def test_claims_win_over_id_and_name_headers() -> None:
    header = encode_easyauth_principal(APP, user_id=USER, name="Jane")
    principal = principal_from_easyauth(header, principal_id="other", principal_name="other")
    assert (principal.user_id, principal.display_name) == (USER, "Jane")


def test_accepted_caller_is_not_audited(caplog: pytest.LogCaptureFixture) -> None:
    principal_from_easyauth(encode_easyauth_principal(APP, [ROLE_SUBMIT]))
    assert audit_records(caplog) == []


# --- Easy Auth: refused --------------------------------------------------------------------------------------

SECRETISH = "secret-looking-value-1234"

REFUSALS = {
    "missing": (None, "missing credentials"),
    "empty": ("", "missing credentials"),
    "blank": ("   ", "missing credentials"),
    "not base64": (f"!!{SECRETISH}!!", "malformed client principal"),
    "one char too many": ("QUJDR" + "A" * 4, "malformed client principal"),
    "base64 of text": (base64.b64encode(f"hello {SECRETISH}".encode()).decode(), "malformed client principal"),
    "base64 of bytes": (base64.b64encode(b"\xff\xfe" + SECRETISH.encode()).decode(), "malformed client principal"),
    "json array": (b64([SECRETISH]), "malformed client principal"),
    "claims not a list": (b64({"claims": {"typ": "appid", "val": SECRETISH}}), "malformed client principal"),
    "claim without val": (b64({"claims": [{"typ": "appid", "value": SECRETISH}]}), "malformed client principal"),
    "claim with a number": (b64({"claims": [{"typ": "appid", "val": 7}]}), "malformed client principal"),
    "no app id": (b64(claims_doc(("oid", SECRETISH), ("name", SECRETISH), ("roles", ROLE_SUBMIT))), "no app id"),
    "empty app id": (b64(claims_doc(("appid", ""), ("name", SECRETISH))), "no app id"),
}


@pytest.mark.parametrize(("header", "reason"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_is_401_with_one_audit_record_and_no_header_contents(
    header: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(UnauthenticatedError) as raised:
        principal_from_easyauth(header)

    err = raised.value
    assert err.status == 401
    assert err.detail.startswith(reason)
    assert err.__cause__ is None and err.__suppress_context__
    (record,) = audit_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.audit == {"event": "auth.refused", "reason": reason, "mode": "easyauth"}  # type: ignore[attr-defined]
    for text in (err.detail, record.getMessage(), json.dumps(record.audit)):  # type: ignore[attr-defined]
        assert SECRETISH not in text
        if header and header.strip():
            assert header.strip() not in text


def test_deeply_nested_json_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    header = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    with pytest.raises(UnauthenticatedError, match="malformed client principal"):
        principal_from_easyauth(header)
    assert len(audit_records(caplog)) == 1


# --- require_role --------------------------------------------------------------------------------------------


def test_require_role_passes_with_any_of_the_roles(caplog: pytest.LogCaptureFixture) -> None:
    principal = Principal(app_id="crm", roles=[ROLE_SUBMIT, ROLE_AUDIT])

    require_role(principal, ROLE_SUBMIT)
    require_role(principal, ROLE_APPROVE, ROLE_AUDIT)

    assert audit_records(caplog) == []


def test_require_role_refuses_with_403_and_one_audit_record(caplog: pytest.LogCaptureFixture) -> None:
    principal = Principal(app_id="crm", user_id=USER, display_name="Jane", roles=[ROLE_SUBMIT])

    with pytest.raises(ForbiddenError) as raised:
        require_role(principal, ROLE_APPROVE, ROLE_OPERATE)

    assert raised.value.status == 403
    assert ROLE_APPROVE in raised.value.detail and ROLE_OPERATE in raised.value.detail
    (record,) = audit_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.audit == {  # type: ignore[attr-defined]
        "event": "auth.forbidden",
        "appId": "crm",
        "required": [ROLE_APPROVE, ROLE_OPERATE],
    }


def test_require_role_with_no_roles_is_empty_handed() -> None:
    with pytest.raises(ForbiddenError):
        require_role(Principal(app_id="crm"), ROLE_SUBMIT)


def test_require_role_needs_a_role_to_check() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        require_role(Principal(app_id="crm", roles=[ROLE_SUBMIT]))


# --- Authenticator -------------------------------------------------------------------------------------------


class StubValidator(JwtValidator):
    """Records the tokens it is handed; stands in for JWKS validation (covered by the integration tests)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def validate(self, token: str) -> Principal:
        self.tokens.append(token)
        return Principal(app_id="from-jwt", roles=[ROLE_SUBMIT], auth_type="jwt")


@pytest.mark.parametrize(
    "name", ["X-MS-CLIENT-PRINCIPAL", "x-ms-client-principal", "X-Ms-Client-Principal"], ids=lambda n: n
)
def test_easyauth_mode_reads_the_header_case_insensitively(name: str) -> None:
    headers = {name: encode_easyauth_principal(APP, [ROLE_SUBMIT]), "Authorization": "Bearer ignored"}

    principal = Authenticator("easyauth").authenticate(headers)

    assert (principal.app_id, principal.auth_type) == (APP, "easyauth")


def test_easyauth_mode_passes_the_id_and_name_headers() -> None:
    headers = {
        "x-ms-client-principal": b64(claims_doc(("appid", APP), ("scp", "access"))),
        "x-ms-client-principal-id": USER,
        "X-MS-CLIENT-PRINCIPAL-NAME": "jane@example.org",
    }
    principal = Authenticator("easyauth").authenticate(headers)
    assert (principal.user_id, principal.display_name) == (USER, "jane@example.org")


def test_easyauth_mode_refuses_a_request_without_the_header(caplog: pytest.LogCaptureFixture) -> None:
    validator = StubValidator()
    headers = {"Authorization": "Bearer something", "X-MS-CLIENT-PRINCIPAL-ID": USER}

    with pytest.raises(UnauthenticatedError, match="missing credentials"):
        Authenticator("easyauth", jwt=validator).authenticate(headers)

    assert validator.tokens == []
    (record,) = audit_records(caplog)
    assert record.audit["mode"] == "easyauth"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "value", "token"),
    [
        ("Authorization", "Bearer abc.def.ghi", "abc.def.ghi"),
        ("authorization", "bearer abc.def.ghi", "abc.def.ghi"),
        ("AUTHORIZATION", "  BEARER   abc.def.ghi  ", "abc.def.ghi"),
    ],
)
def test_jwt_mode_hands_the_bearer_token_to_the_validator(name: str, value: str, token: str) -> None:
    validator = StubValidator()
    headers = {name: value, "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("spoofed", [ROLE_APPROVE])}

    principal = Authenticator("jwt", jwt=validator).authenticate(headers)

    assert validator.tokens == [token]
    assert principal.app_id == "from-jwt"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": f"Basic {SECRETISH}"},
        {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("spoofed", [ROLE_APPROVE])},
    ],
    ids=["none", "empty", "scheme only", "blank token", "basic", "easyauth header only"],
)
def test_jwt_mode_refuses_without_a_bearer_token(headers: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    validator = StubValidator()

    with pytest.raises(UnauthenticatedError) as raised:
        Authenticator("jwt", jwt=validator).authenticate(headers)

    assert raised.value.detail.startswith("missing credentials")
    assert validator.tokens == []
    (record,) = audit_records(caplog)
    assert record.audit == {"event": "auth.refused", "reason": "missing credentials", "mode": "jwt"}  # type: ignore[attr-defined]
    assert SECRETISH not in caplog.text


def test_jwt_mode_needs_a_validator() -> None:
    with pytest.raises(ConfigurationError, match="JwtValidator"):
        Authenticator("jwt")


def test_unknown_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown auth mode"):
        Authenticator("basic")  # type: ignore[arg-type]


def test_mode_is_exposed() -> None:
    assert Authenticator("easyauth").mode == "easyauth"
    assert Authenticator("jwt", jwt=StubValidator()).mode == "jwt"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuer": [], "audience": "api://x", "jwks_url": "http://127.0.0.1/keys"},
        {"issuer": "https://iss", "audience": [""], "jwks_url": "http://127.0.0.1/keys"},
        {"issuer": "https://iss", "audience": "api://x", "jwks_url": ""},
        {"issuer": "https://iss", "audience": "api://x", "jwks_url": "http://127.0.0.1/keys", "leeway": -1},
    ],
    ids=["no issuer", "empty audience", "no jwks url", "negative leeway"],
)
def test_jwt_validator_refuses_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        JwtValidator(**kwargs)
