"""The deployed targets and their policy: chosen together by settings, checked against each other at start-up, and
honest about a target this deployment cannot write to (no base URL yet; a loopback URL in Azure), and no bearer
token over plain http off loopback.

Start-up is the composition root's ``check_configuration`` (what readiness and every trigger build first); intake
goes through the API face over the fakes of the stores, as a caller sees it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from shared.api.caller_identity import encode_easyauth_principal
from shared.api.health import check_health
from shared.bootstrap import Gateway
from shared.core.errors import ConfigurationError
from shared.core.policy import Policy
from shared.core.targets import AuthKind, TargetRegistry
from tests.fake_gateway import fake_gateway

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
LOCAL = {"targets_file": CONFIG / "targets.yaml", "policy_file": CONFIG / "policy.yaml"}
DEPLOYED = {"targets_file": CONFIG / "targets.azure.yaml", "policy_file": CONFIG / "policy.azure.yaml"}
AHDS_URL = "https://ws-fhir.fhir.azurehealthcareapis.com"
URL_SETTING = "WRITEBACK_TARGET_AHDS_FHIR_BASE_URL"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WRITEBACK_TARGET_AHDS_FHIR_BASE_URL", "WRITEBACK_TARGET_LOCAL_EHR_BASE_URL", "WEBSITE_SITE_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("WRITEBACK_SOURCE_")]:
        monkeypatch.delenv(name)


def gateway(files: dict[str, Path], **settings: Any) -> Gateway:
    return fake_gateway(targets_file=files["targets_file"], policy_file=files["policy_file"], settings=settings)


def readiness(gw: Gateway) -> tuple[bool, dict[str, Any]]:
    """Readiness of the configuration (the storage probes need Azurite: tests/integration/test_health.py)."""
    return check_health({name: gw.health_probes[name] for name in ("targets", "policy")})


def submit(gw: Gateway, body: dict[str, Any], key: str = "k-1") -> tuple[int, dict[str, Any]]:
    headers = {
        "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("crm", ["Writeback.Submit"], user_id="u1"),
        "Idempotency-Key": key,
        "Content-Type": "application/json",
    }
    answer = gw.changes_api.submit(headers, json.dumps(body).encode(), "http://127.0.0.1:7071")
    return answer.status, answer.body


def patch_phone(target: str) -> dict[str, Any]:
    return {
        "target": target,
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
    }


# --- start-up: the two pairs, and a mismatch ---------------------------------------------------------------------


def test_the_local_pair_starts_ready() -> None:
    gw = gateway(LOCAL)
    gw.check_configuration()
    assert readiness(gw) == (
        True,
        {
            "status": "ok",
            "dependencies": {
                "targets": {"state": "ok", "targets": {"local-ehr": {"state": "ok"}}},
                "policy": {"state": "ok"},
            },
        },
    )


def test_the_deployed_pair_starts_and_says_what_it_lacks() -> None:
    gw = gateway(DEPLOYED)
    gw.check_configuration()  # the two files agree
    ready, body = readiness(gw)
    assert not ready
    ahds = body["dependencies"]["targets"]["targets"]["ahds-fhir"]
    assert ahds["state"] == "unavailable" and ahds["reason"] == "not-configured" and URL_SETTING in ahds["detail"]
    assert body["dependencies"]["policy"] == {"state": "ok", "sourcesWithoutAppIds": ["crm", "vitals-app"]}


def test_the_deployed_pair_with_its_settings_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_SETTING, AHDS_URL + "/")
    monkeypatch.setenv("WRITEBACK_SOURCE_CRM_APP_IDS", "11111111-aaaa-4bbb-8ccc-000000000001")
    monkeypatch.setenv("WRITEBACK_SOURCE_VITALS_APP_APP_IDS", " 22222222-aaaa-4bbb-8ccc-000000000002 , vitals-2 ")
    gw = gateway(DEPLOYED, WEBSITE_SITE_NAME="func-writeback")
    gw.check_configuration()
    assert readiness(gw)[0] is True
    target = gw.targets.get("ahds-fhir")
    assert target is not None and target.base_url == AHDS_URL
    assert target.auth.type is AuthKind.MANAGED_IDENTITY and target.auth.scope == AHDS_URL + "/.default"
    assert gw.policy.source_for_app("11111111-AAAA-4bbb-8ccc-000000000001") == "crm"
    assert gw.policy.source_for_app("vitals-2") == "vitals-app"
    assert gw.policy.source_for_app("crm") is None  # the local demo ids do not ship


@pytest.mark.parametrize(
    ("targets", "policy", "source", "missing", "defined"),
    [
        ("targets.azure.yaml", "policy.yaml", "crm", "local-ehr", "ahds-fhir"),
        ("targets.yaml", "policy.azure.yaml", "crm", "ahds-fhir", "local-ehr"),
    ],
)
def test_a_mismatched_pair_stops_start_up_naming_files_source_and_target(
    targets: str, policy: str, source: str, missing: str, defined: str
) -> None:
    gw = gateway({"targets_file": CONFIG / targets, "policy_file": CONFIG / policy})
    with pytest.raises(ConfigurationError) as info:
        gw.check_configuration()
    message = str(info.value)
    assert message.startswith(f"policy file {CONFIG / policy} and targets file {CONFIG / targets} do not agree: ")
    line = (CONFIG / policy).read_text().splitlines().index(f"      {missing}:") + 1
    assert f"policy line {line}: sources.{source}.targets.{missing}: target '{missing}' is not in" in message
    assert f"targets.{defined}: no source of the policy has rules for target '{defined}'" in message
    # readiness says the same, and no change is taken in: the API is not even built
    ready, body = readiness(gw)
    assert not ready and body["dependencies"]["policy"]["detail"] == message
    with pytest.raises(ConfigurationError):
        submit(gw, patch_phone(missing))
    assert gw.change_store.query().items == []


def test_the_process_gateway_logs_a_mismatch_when_first_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared import bootstrap

    monkeypatch.setenv("WRITEBACK_TARGETS_FILE", "config/targets.azure.yaml")
    monkeypatch.setenv("WRITEBACK_POLICY_FILE", "config/policy.yaml")
    bootstrap.reset()
    try:
        with caplog.at_level("ERROR", logger="writeback.startup"):
            gw = bootstrap.gateway()  # the first trigger of the process, whichever it is
        [record] = [r for r in caplog.records if r.name == "writeback.startup"]
        assert record.getMessage().startswith(
            f"configuration refused: policy file {CONFIG / 'policy.yaml'} and targets file "
            f"{CONFIG / 'targets.azure.yaml'} do not agree: "
        )
        with pytest.raises(ConfigurationError, match=r"sources\.crm\.targets\.local-ehr"):
            gw.policy  # noqa: B018 - every part that needs the policy refuses
    finally:
        bootstrap.reset()


def test_a_target_without_rules_stops_start_up(tmp_path: Path) -> None:
    targets = (CONFIG / "targets.yaml").read_text() + "  spare-ehr:\n    base_url: https://spare.example/fhir\n"
    (tmp_path / "targets.yaml").write_text(targets)
    gw = gateway({"targets_file": tmp_path / "targets.yaml", "policy_file": CONFIG / "policy.yaml"})
    with pytest.raises(ConfigurationError, match=r"targets\.spare-ehr: no source of the policy has rules"):
        gw.check_configuration()


def test_relative_files_are_found_from_the_app_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # a worker that never moved into the app's folder
    gw = gateway({"targets_file": Path("config/targets.azure.yaml"), "policy_file": Path("config/policy.azure.yaml")})
    gw.check_configuration()
    assert gw.settings.targets_file == CONFIG / "targets.azure.yaml"


# --- a target the deployment cannot write to ---------------------------------------------------------------------


def test_intake_for_a_target_without_its_url_is_503_and_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITEBACK_SOURCE_CRM_APP_IDS", "crm")
    gw = gateway(DEPLOYED)
    status, problem = submit(gw, patch_phone("ahds-fhir"))
    assert status == 503
    assert problem["type"] == "urn:writeback:problem:target-not-ready"
    assert problem["issues"] == [{"path": "/target", "code": "not-configured", "message": problem["detail"]}]
    assert URL_SETTING in problem["detail"]
    assert gw.change_store.query().items == []
    assert gw.idempotency_store.get("crm|u1", "k-1") is None  # the key is not taken
    assert gw.publisher.sent == []  # type: ignore[attr-defined]
    # bad input is still a 4xx naming the field, whatever the target's state
    status, problem = submit(gw, {**patch_phone("ahds-fhir"), "operation": "delete"})
    assert status == 400 and problem["issues"][0]["path"] == "/operation"


def test_the_same_key_goes_through_once_the_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITEBACK_SOURCE_CRM_APP_IDS", "crm")
    before = gateway(DEPLOYED)
    assert submit(before, patch_phone("ahds-fhir"))[0] == 503
    monkeypatch.setenv(URL_SETTING, AHDS_URL)
    after = gateway(DEPLOYED, idempotency_store=before.idempotency_store, change_store=before.change_store)
    status, body = submit(after, patch_phone("ahds-fhir"))
    assert status == 202 and body["target"] == "ahds-fhir"


def test_in_azure_a_loopback_target_is_not_ready_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    local = gateway(LOCAL)
    assert readiness(local)[0] is True and submit(local, patch_phone("local-ehr"))[0] == 202

    in_azure = gateway(LOCAL, WEBSITE_SITE_NAME="func-writeback", WEBSITE_AUTH_ENABLED=True)
    ready, body = readiness(in_azure)
    assert not ready
    entry = body["dependencies"]["targets"]
    assert entry["state"] == "unavailable" and entry["reason"] == "target-not-ready"
    local_ehr = entry["targets"]["local-ehr"]
    assert local_ehr["reason"] == "loopback-in-azure" and "'127.0.0.1'" in local_ehr["detail"]
    status, problem = submit(in_azure, patch_phone("local-ehr"))
    assert status == 503 and problem["issues"][0]["code"] == "loopback-in-azure"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.4", False),
        ("192.0.2.2", False),
        ("localhost.example.org", False),
        ("ehr.example.org", False),
        ("::ffff:10.0.0.4", False),
        ("", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    from shared.core.targets import is_loopback_host

    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/fhir", "http://localhost:9/fhir", "http://[::1]:9/fhir", "http://127.1.1.1/fhir"]
)
def test_in_azure_every_loopback_url_is_not_ready(tmp_path: Path, url: str) -> None:
    (tmp_path / "t.yaml").write_text(f"targets:\n  a:\n    base_url: {url}\n")
    assert TargetRegistry.from_file(tmp_path / "t.yaml", {}).problem("a") is None
    problem = TargetRegistry.from_file(tmp_path / "t.yaml", {}, in_azure=True).problem("a")
    assert problem is not None and problem.code == "loopback-in-azure"


def test_a_null_base_url_is_one_left_to_the_setting(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("targets:\n  a:\n    base_url: null\n    auth: {type: none}\n")
    registry = TargetRegistry.from_file(tmp_path / "t.yaml", {})
    assert registry.ids() == ["a"] and registry.get("a") is None and registry.entry("a") is not None
    problem = registry.problem("a")
    assert problem is not None and problem.code == "not-configured" and "WRITEBACK_TARGET_A_BASE_URL" in problem.detail


# --- no bearer token over plain http off loopback ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "url", "env", "message"),
    [
        (
            "{type: managed_identity, scope: api://x/.default}",
            "http://ehr.example.org/fhir",
            {},
            r"targets\.a: base_url is plain http to 'ehr\.example\.org', which is not a loopback host: the "
            r"managed_identity bearer token would travel in clear; use https",
        ),
        (
            "{type: managed_identity, scope: '{base_url}/.default'}",
            None,
            {"WRITEBACK_TARGET_A_BASE_URL": "http://10.1.2.3:8080"},
            r"plain http to '10\.1\.2\.3'.*\(base_url from WRITEBACK_TARGET_A_BASE_URL\)$",
        ),
        (
            "{type: smart_backend_services, token_url: 'http://ehr.example.org/token', client_id: c, key_name: "
            "'file:/k.pem', scope: system/Patient.rs}",
            "https://ehr.example.org/fhir",
            {},
            r"targets\.a\.auth: token_url is plain http to 'ehr\.example\.org'.*client assertion would travel in clear",
        ),
    ],
    ids=["managed-identity", "from-the-setting", "smart-token-url"],
)
def test_a_token_over_plain_http_off_loopback_fails_validation(
    tmp_path: Path, auth: str, url: str | None, env: dict[str, str], message: str
) -> None:
    base = f"    base_url: {url}\n" if url else ""
    (tmp_path / "t.yaml").write_text(f"targets:\n  a:\n{base}    auth: {auth}\n")
    with pytest.raises(ConfigurationError, match=message):
        TargetRegistry.from_file(tmp_path / "t.yaml", env)


@pytest.mark.parametrize(
    ("url", "auth"),
    [
        ("http://127.0.0.1:8103/fhir/R4", "{type: managed_identity, scope: api://x/.default}"),
        ("http://localhost:8103/fhir/R4", "{type: managed_identity, scope: api://x/.default}"),
        ("https://ehr.example.org/fhir", "{type: managed_identity, scope: api://x/.default}"),
        ("http://ehr.example.org/fhir", "{type: none}"),
    ],
)
def test_tokens_over_http_on_loopback_https_anywhere_and_no_token_anywhere_are_fine(
    tmp_path: Path, url: str, auth: str
) -> None:
    (tmp_path / "t.yaml").write_text(f"targets:\n  a:\n    base_url: {url}\n    auth: {auth}\n")
    assert TargetRegistry.from_file(tmp_path / "t.yaml", {}).get("a") is not None


# --- the sources' app ids from the deployment ----------------------------------------------------------------------


def policy_text(app_ids: str = "[]") -> str:
    return (
        'version: "1"\nsources:\n'
        f"  crm:\n    app_ids: {app_ids}\n"
        "    targets:\n      t:\n        Patient:\n          operations: [update]\n"
        "          paths: {Patient.telecom: allow}\n"
        "  vitals.app:\n    app_ids: [v1]\n"
    )


def test_a_setting_replaces_the_file_app_ids() -> None:
    policy = Policy.from_text(policy_text("[crm]"), environ={"WRITEBACK_SOURCE_CRM_APP_IDS": "a1, A2,,"})
    assert [policy.source_for_app(a) for a in ("a1", "a2", "crm")] == ["crm", "crm", None]
    assert (
        Policy.from_text(policy_text("[crm]"), environ={"WRITEBACK_SOURCE_CRM_APP_IDS": " , "}).source_for_app("crm")
        == "crm"
    )  # an empty setting is no setting
    assert Policy.from_text(policy_text()).sources_without_app_ids == ["crm"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"WRITEBACK_SOURCE_CMR_APP_IDS": "a1"},
            "WRITEBACK_SOURCE_CMR_APP_IDS: names no source of the policy (sources: crm, vitals.app)",
        ),
        (
            {"WRITEBACK_SOURCE_CRM_APP_IDS": "v1"},
            """sources["vitals.app"].app_ids[0]: app id 'v1' is already used by source 'crm' """
            "(from WRITEBACK_SOURCE_CRM_APP_IDS)",
        ),
        ({"WRITEBACK_SOURCE_CRM_APP_IDS": "x" * 257}, "an app id is longer than 256 characters"),
    ],
    ids=["unknown-source", "taken-by-another", "too-long"],
)
def test_a_wrong_app_id_setting_stops_start_up(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Policy.from_text(policy_text(), name="p.yaml", environ=environ)


def test_two_sources_one_setting_name_is_refused_when_set() -> None:
    text = policy_text() + "  vitals-app:\n    app_ids: []\n"
    Policy.from_text(text)  # harmless until the setting is used
    with pytest.raises(ConfigurationError, match=re.escape("fits sources vitals-app and vitals.app alike")):
        Policy.from_text(text, environ={"WRITEBACK_SOURCE_VITALS_APP_APP_IDS": "z"})
