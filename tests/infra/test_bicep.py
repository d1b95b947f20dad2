"""Static checks of the Bicep in infra/: it parses, checkov finds nothing, identity-only access, least privilege.

No Bicep compiler runs here, so the files are parsed with pycep (the parser checkov itself uses) and the
assertions read the parsed JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

pycep = pytest.importorskip("pycep")

INFRA = Path(__file__).resolve().parents[2] / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Built-in Azure role definition ids (identical in every tenant), from the Azure built-in roles reference.
BUILT_IN_ROLES = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Crypto User": "12338af0-0e69-4776-bea7-57ae8d297424",
    "FHIR Data Writer": "3f88fce4-5892-4214-ae73-ba5294559913",
    # The host storage identity's role (Microsoft lists Blob Data Owner for AzureWebJobsStorage):
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    # Roles that must not be granted to the app's identity:
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "FHIR Data Contributor": "5a1fc7df-4bf1-4951-a576-89034ee01acd",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
}
IDENTITY_ROLES = {
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Storage Table Data Contributor",
    "Azure Service Bus Data Sender",
    "Azure Service Bus Data Receiver",
    "Monitoring Metrics Publisher",
    "Key Vault Secrets User",
    "Key Vault Crypto User",
    "FHIR Data Writer",
}
# The deploying user (optional) may manage the approval secrets; nothing else.
DEPLOYER_ROLES = {"Key Vault Secrets Officer"}
ROLE_NAMES = {guid: name for name, guid in BUILT_IN_ROLES.items()}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _parse(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = pycep.BicepParser().parse(text=path.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict[str, Any]]:
    return {path.relative_to(INFRA).as_posix(): _parse(path) for path in BICEP_FILES}


def _config(resource: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, unwrapping `if (...)` conditions."""
    config: dict[str, Any] = resource["config"]
    if "condition" in config and "config" in config:
        inner: dict[str, Any] = config["config"]
        return inner
    return config


def _resources(parsed: dict[str, dict[str, Any]], type_: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (file, name, _config(resource))
        for file, doc in parsed.items()
        for name, resource in doc.get("resources", {}).items()
        if resource["type"].lower() == type_.lower() and not resource.get("existing")
    ]


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _role_guid(doc: dict[str, Any], expression: Any) -> str:
    """Resolve roleDefinitionId to a GUID: a literal, or a variable holding one."""
    variables = doc.get("variables", {})
    for text in _strings(expression):
        if GUID.match(text):
            return text
        if text in variables and isinstance(variables[text]["value"], str) and GUID.match(variables[text]["value"]):
            return str(variables[text]["value"])
    raise AssertionError(f"no role definition GUID in {expression!r}")


def test_there_is_bicep_to_check() -> None:
    assert (INFRA / "main.bicep") in BICEP_FILES
    assert len(BICEP_FILES) >= 8


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = _parse(path)
    assert doc.get("resources") or doc.get("modules")


def test_checkov_reports_no_failed_check() -> None:
    # checkov pins an old `packaging` that pytest refuses, so `make setup` installs it in a venv of its own.
    checkov = INFRA.parent / ".venv-checkov" / "bin" / "checkov"
    if not checkov.exists():
        if os.environ.get("CI"):
            pytest.fail("checkov is missing: `make setup` installs it in .venv-checkov")
        pytest.skip("checkov is not installed: `make setup` installs it in .venv-checkov")
    result = subprocess.run(
        [str(checkov), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "--quiet", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {key: sum(r["summary"][key] for r in reports) for key in ("passed", "failed", "parsing_errors")}
    failed = [
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert summary["parsing_errors"] == 0, result.stdout[-2000:]
    assert summary["passed"] > 0
    assert failed == [], "\n".join(failed)


def test_every_checkov_suppression_gives_a_reason() -> None:
    for path in BICEP_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=CKV2?_[A-Z]+_\d+:\S.{20,}", line), f"{path.name}: {line.strip()}"


def test_role_assignments_are_named_from_scope_principal_and_role(parsed: dict[str, dict[str, Any]]) -> None:
    assignments = _resources(parsed, "Microsoft.Authorization/roleAssignments")
    assert assignments
    for file, name, config in assignments:
        guid_call = config["name"]["function"]
        assert guid_call["type"] == "guid", f"{file}:{name}"
        args = guid_call["parameters"]
        assert args["extra_string_1"] == config["properties"]["principalId"], f"{file}:{name}"
        role_arg = args["extra_string_2"]
        role = _role_guid(parsed[file], config["properties"]["roleDefinitionId"])
        assert _role_guid(parsed[file], role_arg) == role, f"{file}:{name}"


def test_identity_gets_exactly_the_least_privilege_roles(parsed: dict[str, dict[str, Any]]) -> None:
    identity_roles: list[str] = []
    deployer_roles: list[str] = []
    for file, name, config in _resources(parsed, "Microsoft.Authorization/roleAssignments"):
        guid = _role_guid(parsed[file], config["properties"]["roleDefinitionId"])
        role = ROLE_NAMES.get(guid, guid)
        principal = config["properties"]["principalId"]
        if principal == "principalId":
            identity_roles.append(role)
        elif principal == "deployerPrincipalId":
            deployer_roles.append(role)
        else:
            raise AssertionError(f"{file}:{name} assigns {role} to an unexpected principal {principal!r}")
    assert sorted(identity_roles) == sorted(IDENTITY_ROLES)
    assert set(deployer_roles) <= DEPLOYER_ROLES


def test_role_modules_get_the_app_identity(parsed: dict[str, dict[str, Any]]) -> None:
    modules = parsed["main.bicep"]["modules"]
    for module in ("rbac", "fhirRbac"):
        principal = _config(modules[module])["params"]["principalId"]
        names = [s for s in _strings(principal) if s != "property_accessor"]
        assert names == ["identity", "outputs", "principalId"], module
    assert "condition" in modules["fhirRbac"]["config"], "FHIR Data Writer only when a FHIR service is given"


FORBIDDEN = [
    "AccountKey=",
    "SharedAccessKey=",
    "SharedAccessSignature",
    "listKeys(",
    "listkeys(",
    "primaryConnectionString",
    "primaryKey",
    "connectionStrings",
]


@pytest.mark.parametrize("path", sorted(p for p in INFRA.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_no_key_based_connection_anywhere_in_infra(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for needle in FORBIDDEN:
        assert needle not in text, f"{path.name} contains {needle!r}"
    for line in text.splitlines():
        # AzureWebJobsStorage itself would be a connection string; only its __-suffixed identity settings are allowed.
        assert not re.match(r"\s*'?AzureWebJobsStorage'?\s*:", line), f"{path.name}: {line.strip()}"
        if re.search(r"connectionString\s*:", line, re.IGNORECASE):
            # The only connection string is Application Insights', which carries no key.
            assert "applicationInsights" in line, f"{path.name}: {line.strip()}"


def test_storage_allows_entra_id_only(parsed: dict[str, dict[str, Any]]) -> None:
    [(_, _, storage)] = _resources(parsed, "Microsoft.Storage/storageAccounts")
    props = storage["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_service_bus_and_app_insights_disable_local_auth(parsed: dict[str, dict[str, Any]]) -> None:
    [(_, _, namespace)] = _resources(parsed, "Microsoft.ServiceBus/namespaces")
    assert namespace["properties"]["disableLocalAuth"] is True
    assert namespace["sku"]["name"] == "Standard"
    [(_, _, insights)] = _resources(parsed, "Microsoft.Insights/components")
    assert insights["properties"]["DisableLocalAuth"] is True


def test_change_queue_settings(parsed: dict[str, dict[str, Any]]) -> None:
    [(_, _, queue)] = _resources(parsed, "Microsoft.ServiceBus/namespaces/queues")
    for key, value in {
        "requiresDuplicateDetection": True,
        "duplicateDetectionHistoryTimeWindow": "PT10M",
        "maxDeliveryCount": 10,
        "lockDuration": "PT1M",
        "deadLetteringOnMessageExpiration": True,
    }.items():
        assert queue["properties"][key] == value, key


def test_key_vault_is_rbac_only_with_purge_protection(parsed: dict[str, dict[str, Any]]) -> None:
    [(_, _, vault)] = _resources(parsed, "Microsoft.KeyVault/vaults")
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True


def test_function_app_is_flex_consumption_python_311_https_only(parsed: dict[str, dict[str, Any]]) -> None:
    [(_, _, plan)] = _resources(parsed, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    [(_, _, site)] = _resources(parsed, "Microsoft.Web/sites")
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    assert props["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    deployment_auth = props["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert deployment_auth["type"] == "UserAssignedIdentity"
    assert site["identity"]["type"] == "UserAssigned"


def test_app_settings_are_identity_based(parsed: dict[str, dict[str, Any]]) -> None:
    settings = parsed["app/api.bicep"]["variables"]["baseAppSettings"]["value"]
    required = {
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "ServiceBusConnection__fullyQualifiedNamespace",
        "ServiceBusConnection__credential",
        "ServiceBusConnection__clientId",
        "WritebackStorage__tableServiceUri",
        "WritebackStorage__blobServiceUri",
        "WRITEBACK_MANAGED_IDENTITY_CLIENT_ID",
        "AZURE_CLIENT_ID",
        "WRITEBACK_TASK_HUB",
        "WRITEBACK_QUEUE_NAME",
        "WRITEBACK_AUTH_MODE",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    }
    assert required <= settings.keys()
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert settings["WRITEBACK_AUTH_MODE"] == "easyauth"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].startswith("Authorization=AAD;ClientId=")


def test_approval_secrets_are_key_vault_references(parsed: dict[str, dict[str, Any]]) -> None:
    main = parsed["main.bicep"]
    for variable, setting in (
        ("approvalSettings", "WRITEBACK_APPROVAL_SIGNING_KEYS"),
        ("webhookSettings", "WRITEBACK_APPROVAL_WEBHOOK_URL"),
    ):
        values = [s for s in _strings(main["variables"][variable]["value"]) if setting in s or "@Microsoft" in s]
        assert values and all(v.startswith("@Microsoft.KeyVault(SecretUri=") for v in values), (variable, values)
    for name in ("approvalWebhookUrl", "approvalSigningKeys"):
        decorators = _strings(main["parameters"][name]["decorators"])
        assert "secure" in decorators, name


def test_easy_auth_requires_entra_id(parsed: dict[str, dict[str, Any]]) -> None:
    [auth] = [c for _, _, c in _resources(parsed, "Microsoft.Web/sites/config") if c["name"] == "authsettingsV2"]
    validation = auth["properties"]["globalValidation"]
    assert validation["requireAuthentication"] is True
    for setting in ("unauthenticatedClientAction", "excludedPaths"):
        assert "easyAuth" in _strings(validation[setting]) and setting in _strings(validation[setting])
    loaded = _strings(parsed["app/api.bicep"]["variables"]["easyAuth"]["value"])
    assert loaded == ["load_json_content", "easyauth.json"], "the settings come from the file the emulation reads"
    settings = json.loads((INFRA / "app" / "easyauth.json").read_text())
    assert settings["unauthenticatedClientAction"] == "Return401"
    assert settings["excludedPaths"] == [
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/callbacks/approval",
        "/review",  # the page holds no data; it sends a signed-out person to /.auth/login/aad
        "/review/assets/*",
    ]
    # App Service matches excluded paths exactly, or by a trailing /* only (no wildcard inside a path).
    assert all("*" not in p.removesuffix("/*") for p in settings["excludedPaths"])
    aad = auth["properties"]["identityProviders"]["azureActiveDirectory"]
    assert aad["enabled"] is True
    assert aad["validation"]["allowedAudiences"] == "allowedAudiences"


def test_azure_yaml_declares_the_function_service() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((INFRA.parent / "azure.yaml").read_text(encoding="utf-8"))
    assert doc["services"]["api"] == {"project": ".", "language": "python", "host": "function"}


def test_parameters_file_maps_every_value_to_an_azd_variable() -> None:
    doc = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    main = _parse(INFRA / "main.bicep")
    for name, entry in doc["parameters"].items():
        assert name in main["parameters"], name
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), name


def test_the_workbook_holds_the_admins_queries() -> None:
    text = (INFRA / "app" / "workbook.bicep").read_text()
    for metric in (
        "writeback.approvals.pending",
        "writeback.changes.ended",
        "writeback.write.duration",
        "writeback.retries",
        "writeback.conflicts",
    ):
        assert metric in text, metric
    assert "module workbook 'app/workbook.bicep'" in (INFRA / "main.bicep").read_text()


def _app_settings(parsed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    settings: dict[str, Any] = parsed["app/api.bicep"]["variables"]["baseAppSettings"]["value"]
    return settings


def _timespan_seconds(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_durable_functions_on_flex_consumption_as_microsoft_recommends(parsed: dict[str, dict[str, Any]]) -> None:
    # learn.microsoft.com/azure/azure-functions/durable/durable-functions-azure-storage-provider#flex-consumption-plan:
    # one always-ready instance for the durable group, and a queue polling interval of 10 seconds or less.
    main = parsed["main.bicep"]["parameters"]["durableAlwaysReadyInstances"]
    assert main["default"] == 1
    assert {"type": "min_value", "argument": 0} in main["decorators"]
    assert _config(parsed["main.bicep"]["modules"]["api"])["params"]["durableAlwaysReadyInstances"] == (
        "durableAlwaysReadyInstances"
    )
    [(_, _, site)] = _resources(parsed, "Microsoft.Web/sites")
    always_ready = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"]
    branches = always_ready["operator"]["operands"]
    assert branches["true_value"] == [{"name": "durable", "instanceCount": "durableAlwaysReadyInstances"}]
    assert branches["false_value"] == []
    host = json.loads((INFRA.parent / "host.json").read_text(encoding="utf-8"))
    provider = host["extensions"]["durableTask"]["storageProvider"]
    assert 0 < _timespan_seconds(provider["maxQueuePollingInterval"]) <= 10


def test_app_reads_the_deployed_targets_and_policy(parsed: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(parsed)
    for setting, expected in (
        ("WRITEBACK_TARGETS_FILE", "config/targets.azure.yaml"),
        ("WRITEBACK_POLICY_FILE", "config/policy.azure.yaml"),
    ):
        assert settings[setting] == expected
        assert (INFRA.parent / expected).is_file(), expected


def test_easy_auth_detection_is_left_to_the_platform(parsed: dict[str, dict[str, Any]]) -> None:
    # The platform sets WEBSITE_AUTH_ENABLED from authsettingsV2 and the Flex Consumption host runs Easy Auth only
    # while it is true; an app setting would override it, and WRITEBACK_TRUSTED_FRONT would make the gateway believe
    # X-MS-CLIENT-PRINCIPAL even with Easy Auth turned off. Neither is set anywhere in infra/.
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for setting in ("WEBSITE_AUTH_ENABLED", "WRITEBACK_TRUSTED_FRONT"):
                assert f"{setting}:" not in text and f"'{setting}'" not in text, (path.name, setting)
    [auth] = [c for _, _, c in _resources(parsed, "Microsoft.Web/sites/config") if c["name"] == "authsettingsV2"]
    assert auth["properties"]["login"]["tokenStore"] == {"enabled": False}


def test_crypto_user_is_granted_per_signing_key_not_on_the_vault(parsed: dict[str, dict[str, Any]]) -> None:
    rbac = parsed["app/rbac.bicep"]
    [crypto] = [
        resource
        for resource in rbac["resources"].values()
        if resource["type"] == "Microsoft.Authorization/roleAssignments"
        and "keyVaultCryptoUser" in _strings(resource["config"])
    ]
    assert crypto["config"]["loop_type"]["detail"]["array_name"] == "smartSigningKeyNames"
    scope = crypto["config"]["config"]["scope"]["operator"]
    assert scope["type"] == "index_accessor" and scope["operands"]["operand_1"] == "smartKeys"
    keys = rbac["resources"]["smartKeys"]
    assert keys["type"] == "Microsoft.KeyVault/vaults/keys" and keys["existing"] is True
    assert rbac["parameters"]["smartSigningKeyNames"]["default"] == []
