"""Core Tools' settings: ``local.settings.sample.json`` and what ``make services`` writes (``core_tools_values``) hold
every setting the bindings, host.json and the app read; the writer keeps what the user added; the Service Bus
emulator's entity file declares the queue as the app needs it. ``make services`` itself is exercised in
tests/e2e/test_make_services.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.core.errors import ConfigurationError
from tests.core_tools_settings import REPO, build_app_parts, missing_host_settings, settings_the_host_reads
from tools.services.local_settings import (
    SERVICE_BUS_CONNECTION,
    SERVICE_BUS_EMULATOR,
    core_tools_values,
    write_local_settings,
)

SAMPLE = REPO / "local.settings.sample.json"
EMULATOR_CONFIG = REPO / "tools/services/servicebus-emulator-config.json"
# What tools.services writes to .local/endpoints.json (ports as a `make services` run picked them).
ENDPOINTS: dict[str, Any] = {
    "api": "http://127.0.0.1:7071/api/v1",
    "fhir": {"local-ehr": "http://127.0.0.1:28103/fhir/R4"},
    "fhirScopes": {"local-ehr": "api://local-ehr/.default"},
    "identityEndpoint": "http://127.0.0.1:28104/msi/token",
    "identityHeader": "per-run-header",
    "storageConnectionString": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:20000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:20001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:20002/devstoreaccount1;",
    "openId": {"issuer": "http://127.0.0.1:28105/t/v2.0", "clientId": "site", "clientSecretsFile": "/x"},
}
APP_PARTS = ("table_service", "blob_service", "targets", "policy", "authenticator")


def sample_values() -> dict[str, str]:
    sample = json.loads(SAMPLE.read_text())
    assert sample["IsEncrypted"] is False
    values: dict[str, str] = sample["Values"]
    assert all(isinstance(v, str) for v in values.values()), "Core Tools takes string values only"
    return values


def test_the_bindings_and_host_json_read_the_settings_this_checks() -> None:
    """The check reads the app: today the queue trigger's connection and queue name, the task hub, the storage."""
    names, connections = settings_the_host_reads()
    assert names == {"WRITEBACK_QUEUE_NAME", "WRITEBACK_TASK_HUB"}
    assert connections == {"ServiceBusConnection", "AzureWebJobsStorage"}


def test_the_sample_holds_every_setting_the_host_reads() -> None:
    assert missing_host_settings(sample_values()) == []


def test_the_sample_builds_the_apps_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    build_app_parts(monkeypatch, sample_values(), *APP_PARTS)


def test_the_sample_leaves_the_identity_of_a_local_run_to_the_developer() -> None:
    """Locally an identity-based connection uses the developer's identity (az login) and ``credential`` /
    ``clientId`` are not set (https://learn.microsoft.com/azure/azure-functions/functions-reference#local-development-with-identity-based-connections);
    ``credential: managedidentity`` would ask for a managed identity a workstation does not have."""
    values = sample_values()
    assert [k for k in values if k.endswith(("__credential", "__clientId"))] == []


def test_what_make_services_writes_holds_every_setting_the_host_reads() -> None:
    values = core_tools_values(ENDPOINTS)
    assert missing_host_settings(values) == []
    assert (
        values["AzureWebJobsStorage"]
        == values["WRITEBACK_STORAGE_CONNECTION_STRING"]
        == ENDPOINTS["storageConnectionString"]
    )
    assert values[SERVICE_BUS_CONNECTION] == SERVICE_BUS_EMULATOR
    assert values["WRITEBACK_TARGET_LOCAL_EHR_BASE_URL"] == "http://127.0.0.1:28103/fhir/R4"
    assert (values["IDENTITY_ENDPOINT"], values["IDENTITY_HEADER"]) == (
        "http://127.0.0.1:28104/msi/token",
        "per-run-header",
    )
    assert not [k for k in values if k.startswith("WRITEBACK_DEV_")], "the local runtime's own settings stay out"


def test_what_make_services_writes_builds_the_apps_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    build_app_parts(monkeypatch, core_tools_values(ENDPOINTS), *APP_PARTS)


def test_the_app_can_publish_to_the_queue_the_trigger_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under func start with the emulator, intake publishes on the connection string the trigger reads."""
    build_app_parts(monkeypatch, core_tools_values(ENDPOINTS), "publisher")


def test_a_service_bus_connection_string_is_refused_in_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {**core_tools_values(ENDPOINTS), "WEBSITE_SITE_NAME": "writeback-app"}
    with pytest.raises(ConfigurationError, match="identity-based"):
        build_app_parts(monkeypatch, values, "publisher")


def test_the_writer_keeps_the_users_settings_and_refreshes_the_services(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"IDENTITY_HEADER": "stale", "WRITEBACK_AUTH_MODE": "jwt"},
                "Host": {"LocalHttpPort": 7072},
            }
        )
    )
    write_local_settings(path, ENDPOINTS)
    written = json.loads(path.read_text())
    assert written["Host"] == {"LocalHttpPort": 7072}
    assert written["Values"]["WRITEBACK_AUTH_MODE"] == "jwt"
    assert written["Values"]["IDENTITY_HEADER"] == "per-run-header"
    assert missing_host_settings(written["Values"]) == []


def test_the_writer_keeps_a_namespace_the_user_chose(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    namespace = {"ServiceBusConnection__fullyQualifiedNamespace": "mine.servicebus.windows.net"}
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {**namespace, SERVICE_BUS_CONNECTION: "old"}}))
    write_local_settings(path, ENDPOINTS)
    values = json.loads(path.read_text())["Values"]
    assert SERVICE_BUS_CONNECTION not in values, "a connection string would win over the namespace in the host"
    assert values["ServiceBusConnection__fullyQualifiedNamespace"] == "mine.servicebus.windows.net"
    assert missing_host_settings(values) == []


def test_the_writer_leaves_an_encrypted_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text('{"IsEncrypted": true, "Values": {"AzureWebJobsStorage": "b64..."}}')
    assert "left alone" in write_local_settings(path, ENDPOINTS)
    assert json.loads(path.read_text())["IsEncrypted"] is True


def test_the_emulator_config_declares_the_queue_with_duplicate_detection() -> None:
    """The gateway's MessageId de-duplication needs duplicate detection on the queue, and a dead letter after the
    default 10 deliveries; the queue name is the one the trigger resolves from WRITEBACK_QUEUE_NAME."""
    config = json.loads(EMULATOR_CONFIG.read_text())
    (namespace,) = config["UserConfig"]["Namespaces"]
    queues = {q["Name"]: q["Properties"] for q in namespace["Queues"]}
    queue = queues[core_tools_values(ENDPOINTS)["WRITEBACK_QUEUE_NAME"]]
    assert queue["RequiresDuplicateDetection"] is True
    assert queue["MaxDeliveryCount"] == 10
    assert queue["LockDuration"] == "PT1M"
