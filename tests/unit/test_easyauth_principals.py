"""The tokens the local OpenID provider issues are shaped as Entra's, and the emulation turns each into the
``X-MS-CLIENT-PRINCIPAL`` App Service builds, which the gateway reads as the right caller: a browser session (the ID
token) is the person; an app acting for a person (a delegated access token, with ``scp``) is that app and person; an
app acting as itself (client credentials, no ``scp``) is the app alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from devhost.easyauth.principal import ClientPrincipal, mapped_claims
from shared.api.caller_identity import OBJECT_ID_CLAIM_URI, ROLE_CLAIM_URI, SESSION, principal_from_easyauth
from shared.core.models import Principal
from tools.openid_provider.directory import Directory, DirectoryError, load_directory
from tools.openid_provider.tokens import TokenMinter, load_or_create_key

REPO = Path(__file__).resolve().parents[2]
ALICE = "a11ce000-0000-4000-8000-000000000001"
RILEY = "a1e90000-0000-4000-8000-000000000003"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Directory:
    return load_directory(REPO / "config" / "demo-users.yaml", tmp_path_factory.mktemp("openid") / "secrets.json")


@pytest.fixture(scope="module")
def minter(directory: Directory, tmp_path_factory: pytest.TempPathFactory) -> TokenMinter:
    key = load_or_create_key(tmp_path_factory.mktemp("openid") / "key.pem")
    return TokenMinter(key=key, issuer="http://127.0.0.1:1/tenant/v2.0", directory=directory)


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def header_document(principal: ClientPrincipal) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(principal.encoded()))
    return document


def gateway_sees(principal: ClientPrincipal) -> Principal:
    headers = dict((k.decode(), v.decode()) for k, v in principal.headers())
    return principal_from_easyauth(
        headers["x-ms-client-principal"],
        principal_id=headers.get("x-ms-client-principal-id"),
        principal_name=headers.get("x-ms-client-principal-name"),
    )


def test_an_id_token_has_no_app_id_or_scope_and_becomes_the_person(directory: Directory, minter: TokenMinter) -> None:
    alice = directory.users[ALICE]
    claims = claims_of(minter.id_token(alice, directory.site, nonce="n-1"))
    assert claims["aud"] == directory.site.client_id and claims["oid"] == ALICE and claims["nonce"] == "n-1"
    assert claims["name"] == "Alice Reviewer" and claims["preferred_username"] == "alice@writeback.example"
    assert claims["roles"] == ["Writeback.Approve"] and claims["ver"] == "2.0" and claims["tid"]
    assert not {"azp", "appid", "scp", "idtyp"} & claims.keys()

    principal = ClientPrincipal(claims)
    document = header_document(principal)
    assert document["auth_typ"] == "aad" and document["role_typ"] == ROLE_CLAIM_URI
    assert document["name_typ"] == "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
    pairs = [(c["typ"], c["val"]) for c in document["claims"]]
    assert (OBJECT_ID_CLAIM_URI, ALICE) in pairs and (ROLE_CLAIM_URI, "Writeback.Approve") in pairs
    assert ("aud", directory.site.client_id) in pairs and ("name", "Alice Reviewer") in pairs
    assert not [t for t, _ in pairs if t in ("oid", "roles", "sub")], "App Service's default mapping renames these"
    assert gateway_sees(principal) == Principal(
        app_id=directory.site.client_id,
        user_id=ALICE,
        display_name="Alice Reviewer",
        roles=["Writeback.Approve"],
        auth_type=SESSION,
    )


def test_a_delegated_token_is_the_app_acting_for_the_person(directory: Directory, minter: TokenMinter) -> None:
    riley, crm = directory.users[RILEY], directory.clients["crm"]
    claims = claims_of(minter.delegated_token(riley, crm, directory.site.client_id, ["user_impersonation"]))
    assert claims["aud"] == directory.site.client_id and claims["azp"] == "crm" and claims["azpacr"] == "1"
    assert claims["scp"] == "user_impersonation" and claims["oid"] == RILEY
    assert claims["roles"] == ["Writeback.Submit", "Writeback.Approve"]  # the person's roles on the site
    seen = gateway_sees(ClientPrincipal(claims))
    assert (seen.app_id, seen.user_id, seen.auth_type) == ("crm", RILEY, "easyauth")
    assert seen.actor == RILEY


def test_an_app_only_token_has_no_scope_and_no_person(directory: Directory, minter: TokenMinter) -> None:
    claims = claims_of(minter.app_token(directory.clients["vitals-app"], directory.site.client_id))
    assert claims["azp"] == "vitals-app" and claims["roles"] == ["Writeback.Submit"]
    assert "scp" not in claims and claims["oid"] == claims["sub"]
    seen = gateway_sees(ClientPrincipal(claims))
    assert (seen.app_id, seen.user_id, seen.actor) == ("vitals-app", None, "app:vitals-app")


def test_every_value_of_a_claim_is_its_own_claim_and_numbers_are_text() -> None:
    mapped = mapped_claims({"roles": ["A", "B"], "exp": 1700000000, "amr": ["pwd"], "scp": "a b", "flag": True})
    assert mapped == [
        {"typ": ROLE_CLAIM_URI, "val": "A"},
        {"typ": ROLE_CLAIM_URI, "val": "B"},
        {"typ": "exp", "val": "1700000000"},
        {"typ": "http://schemas.microsoft.com/claims/authnmethodsreferences", "val": "pwd"},
        {"typ": "http://schemas.microsoft.com/identity/claims/scope", "val": "a b"},
        {"typ": "flag", "val": "true"},
    ]


def test_the_me_entry_has_app_services_shape(directory: Directory, minter: TokenMinter) -> None:
    token = minter.id_token(directory.users[ALICE], directory.site, nonce=None)
    entry = ClientPrincipal(claims_of(token)).me_entry(token)
    assert set(entry) == {"provider_name", "user_claims", "user_id", "id_token", "expires_on"}
    assert entry["provider_name"] == "aad" and entry["user_id"] == "alice@writeback.example"
    assert entry["expires_on"].endswith("Z") and entry["id_token"] == token


def test_the_directory_is_checked_and_loopback_redirects_match_on_any_port(
    directory: Directory, tmp_path: Path
) -> None:
    crm = directory.clients["crm"]
    assert crm.redirect_allowed("http://127.0.0.1:49152/crm/callback")
    assert not crm.redirect_allowed("http://127.0.0.1:49152/crm/callback/x")
    assert not crm.redirect_allowed("http://evil.example/crm/callback")
    assert directory.site.redirect_allowed("http://localhost:7071/.auth/login/aad/callback")
    assert set(directory.secrets) == {directory.site.client_id, "crm", "vitals-app"}  # ops-cli is public
    again = load_directory(REPO / "config" / "demo-users.yaml", tmp_path / "s.json")
    assert again.secrets != directory.secrets, "secrets are generated per state folder, never fixed"
    broken = tmp_path / "users.yaml"
    broken.write_text("tenant_id: t\nsite: {client_id: s}\nusers: [{oid: x, name: X}]\n")
    with pytest.raises(DirectoryError, match=r"users\[0\]\.username"):
        load_directory(broken, tmp_path / "s2.json")
