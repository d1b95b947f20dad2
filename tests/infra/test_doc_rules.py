"""Rules from Microsoft's documentation, checked in CI: each holds on the real infra and catches a planted violation.

The rules live in tests/infra/doc_rules.py (what each one checks, and the page it comes from, is in its docstring);
the planted violations are small Bicep snippets or edited copies of infra/ in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("pycep")

from tests.infra.bicep_model import Infra, parse_bicep
from tests.infra.doc_rules import (
    REPO,
    excluded_path_problems,
    identity_connection_problems,
    key_vault_role_problems,
    target_override_problems,
    unguarded_index_problems,
)

INFRA = REPO / "infra"


@pytest.fixture(scope="module")
def infra() -> Infra:
    return Infra.load(INFRA)


def edited_infra(tmp_path: Path, edits: dict[str, Callable[[str], str]]) -> Infra:
    """A copy of infra/ with some files edited (each edit must change its file)."""
    root = tmp_path / "infra"
    shutil.copytree(INFRA, root)
    for name, edit in edits.items():
        path = root / name
        before = path.read_text(encoding="utf-8")
        after = edit(before)
        assert after != before, f"the edit of {name} changed nothing"
        path.write_text(after, encoding="utf-8")
    return Infra.load(root)


def replace(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new)


def snippet_infra(tmp_path: Path, main: str) -> Infra:
    root = tmp_path / "snippet"
    (root / "app").mkdir(parents=True)
    (root / "main.bicep").write_text(main, encoding="utf-8")
    (root / "app" / "m.bicep").write_text("param a string\nparam b string\n", encoding="utf-8")
    return Infra.load(root)


# --- (a) excludedPaths: exact paths or a trailing /* only ----------------------------------------------------------


def test_excluded_paths_use_no_wildcard_but_a_trailing_one() -> None:
    settings = json.loads((INFRA / "app" / "easyauth.json").read_text(encoding="utf-8"))
    assert settings["excludedPaths"], "the rule must have something to check"
    assert excluded_path_problems(settings["excludedPaths"]) == []


@pytest.mark.parametrize("path", ["/api/*/health", "/review/*.js", "*", "/review/assets/*/x"])
def test_excluded_paths_rule_catches_an_inner_wildcard(path: str) -> None:
    problems = excluded_path_problems(["/api/v1/health", path])
    assert any(repr(path) in p and "wildcard" in p for p in problems), problems


def test_excluded_paths_rule_accepts_a_trailing_wildcard() -> None:
    assert excluded_path_problems(["/review/assets/*", "/api/v1/health"]) == []


# --- (b) no unguarded array index where ARM evaluates it under a false condition -----------------------------------

UNGUARDED = """
targetScope = 'subscription'
param fhirServiceResourceId string = ''
var fhirIdParts = split(fhirServiceResourceId, '/')
module fhirRbac 'app/m.bicep' = if (!empty(fhirServiceResourceId)) {
  name: 'fhir-rbac'
  scope: resourceGroup(fhirIdParts[2], fhirIdParts[4])
  params: {
    a: '${fhirIdParts[8]}/${fhirIdParts[10]}'
    b: first(skip(fhirIdParts, 3))
  }
}
"""


def test_no_unguarded_index_in_the_infra(infra: Infra) -> None:
    assert unguarded_index_problems(infra) == []


def test_index_rule_catches_the_split_of_an_empty_id(tmp_path: Path) -> None:
    problems = unguarded_index_problems(snippet_infra(tmp_path, UNGUARDED))
    for index in ("fhirIdParts[2]", "fhirIdParts[4]", "fhirIdParts[8]", "fhirIdParts[10]", "first(...)"):
        assert any(index in p for p in problems), (index, problems)
    assert all(p.startswith("main.bicep module fhirRbac ") for p in problems)


def test_index_rule_accepts_a_placeholder_chosen_by_the_modules_input(tmp_path: Path) -> None:
    guarded = UNGUARDED.replace(
        "var fhirIdParts = split(fhirServiceResourceId, '/')",
        "var fhirId = empty(fhirServiceResourceId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups"
        "/rg/providers/Microsoft.HealthcareApis/workspaces/none/fhirservices/none' : fhirServiceResourceId\n"
        "var fhirIdParts = split(fhirId, '/')",
    ).replace("b: first(skip(fhirIdParts, 3))", "b: 'x'")
    assert unguarded_index_problems(snippet_infra(tmp_path, guarded)) == []


def test_index_rule_wants_a_placeholder_long_enough(tmp_path: Path) -> None:
    short = UNGUARDED.replace(
        "var fhirIdParts = split(fhirServiceResourceId, '/')",
        "var fhirIdParts = split(empty(fhirServiceResourceId) ? '/subscriptions/s/resourceGroups/rg'"
        " : fhirServiceResourceId, '/')",
    ).replace("b: first(skip(fhirIdParts, 3))", "b: 'x'")
    problems = unguarded_index_problems(snippet_infra(tmp_path, short))
    assert [p.split(": ")[1] for p in problems] == [
        "fhirIdParts[8] indexes an array that may be too short, unguarded",
        "fhirIdParts[10] indexes an array that may be too short, unguarded",
    ]


def test_index_rule_accepts_a_conditional_that_tests_the_input(tmp_path: Path) -> None:
    guarded = (
        UNGUARDED.replace(
            "resourceGroup(fhirIdParts[2], fhirIdParts[4])",
            "resourceGroup(empty(fhirServiceResourceId) ? 's' : fhirIdParts[2], "
            "empty(fhirServiceResourceId) ? 'rg' : fhirIdParts[4])",
        )
        .replace("'${fhirIdParts[8]}/${fhirIdParts[10]}'", "empty(fhirServiceResourceId) ? 'n/a' : fhirIdParts[8]")
        .replace("b: first(skip(fhirIdParts, 3))", "b: 'x'")
    )
    assert unguarded_index_problems(snippet_infra(tmp_path, guarded)) == []


def test_index_rule_rejects_a_conditional_that_tests_something_else(tmp_path: Path) -> None:
    unrelated = (
        UNGUARDED.replace(
            "param fhirServiceResourceId string = ''", "param fhirServiceResourceId string = ''\nparam on bool"
        )
        .replace("resourceGroup(fhirIdParts[2], fhirIdParts[4])", "resourceGroup(on ? fhirIdParts[2] : 's', 'rg')")
        .replace("a: '${fhirIdParts[8]}/${fhirIdParts[10]}'", "a: 'x'")
        .replace("b: first(skip(fhirIdParts, 3))", "b: 'x'")
    )
    [problem] = unguarded_index_problems(snippet_infra(tmp_path, unrelated))
    assert "fhirIdParts[2]" in problem


def test_index_rule_checks_variables_whatever_the_conditions(tmp_path: Path) -> None:
    snippet = "param id string = ''\nvar name = split(id, '/')[8]\nvar head = split(id, '/')[0]\n"
    [problem] = unguarded_index_problems(snippet_infra(tmp_path, snippet))
    assert problem.startswith("main.bicep variable name: ")


# --- (c) every WRITEBACK_TARGET_<ID>_BASE_URL names a target of the deployed targets file -------------------------


def test_target_base_url_overrides_name_deployed_targets(infra: Infra) -> None:
    assert any(name.startswith("WRITEBACK_TARGET_") for name in infra.app_settings()), "nothing to check"
    assert target_override_problems(infra) == []


def test_target_rule_catches_an_override_for_an_unknown_target(tmp_path: Path) -> None:
    planted = edited_infra(
        tmp_path, {"main.bicep": replace("WRITEBACK_TARGET_AHDS_FHIR_BASE_URL", "WRITEBACK_TARGET_EPIC_PROD_BASE_URL")}
    )
    [problem] = target_override_problems(planted)
    assert "WRITEBACK_TARGET_EPIC_PROD_BASE_URL" in problem and "config/targets.azure.yaml" in problem


def test_target_rule_reads_the_targets_file_the_infra_deploys(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "config").mkdir(parents=True)
    (repo / "config" / "targets.azure.yaml").write_text("targets:\n  local-ehr:\n    base_url: http://127.0.0.1\n")
    [problem] = target_override_problems(Infra.load(INFRA), repo)
    assert "WRITEBACK_TARGET_AHDS_FHIR_BASE_URL names no target" in problem and "['local-ehr']" in problem


# --- (d) every Key Vault use has its role -------------------------------------------------------------------------


def kv_targets(repo: Path, key_name: str) -> Path:
    (repo / "config").mkdir(parents=True, exist_ok=True)
    (repo / "config" / "targets.azure.yaml").write_text(
        "targets:\n  ahds-fhir:\n    base_url: https://fhir.example.org\n"
        "  epic:\n    base_url: https://epic.example.org\n    auth:\n      type: smart_backend_services\n"
        f"      token_url: https://epic.example.org/token\n      client_id: c\n      key_name: {key_name}\n"
        "      scope: system/Patient.rs\n",
        encoding="utf-8",
    )
    return repo


def test_key_vault_uses_have_their_roles(infra: Infra) -> None:
    references = [n for n, (_, v) in infra.app_settings().items() if "@Microsoft.KeyVault(" in str(v)]
    assert references, "nothing to check"
    assert key_vault_role_problems(infra) == []


def test_key_vault_rule_catches_a_reference_without_secrets_user(tmp_path: Path) -> None:
    planted = edited_infra(
        tmp_path,
        {
            "app/rbac.bicep": replace(
                "roleDefinitions', keyVaultSecretsUser)", "roleDefinitions', monitoringMetricsPublisher)"
            )
        },
    )
    problems = key_vault_role_problems(planted)
    assert any("WRITEBACK_APPROVAL_SIGNING_KEYS" in p and "Key Vault Secrets User" in p for p in problems), problems
    assert any("WRITEBACK_APPROVAL_WEBHOOK_URL" in p for p in problems), problems


def test_key_vault_rule_catches_references_without_the_reference_identity(tmp_path: Path) -> None:
    planted = edited_infra(tmp_path, {"app/api.bicep": replace("keyVaultReferenceIdentity: identityId", "")})
    [problem] = key_vault_role_problems(planted)
    assert "keyVaultReferenceIdentity" in problem


def test_key_vault_rule_catches_a_smart_key_without_crypto_user(tmp_path: Path, infra: Infra) -> None:
    repo = kv_targets(tmp_path / "repo", "kv:https://kv-writeback.vault.azure.net/smart-epic")
    [problem] = key_vault_role_problems(infra, repo)
    assert "target epic signs with Key Vault key 'smart-epic'" in problem and "Crypto User" in problem


def test_key_vault_rule_accepts_a_smart_key_granted_crypto_user(tmp_path: Path) -> None:
    repo = kv_targets(tmp_path / "repo", "kv:https://kv-writeback.vault.azure.net/smart-epic")
    granted = edited_infra(
        tmp_path,
        {
            "main.parameters.json": replace(
                "${WRITEBACK_SMART_SIGNING_KEY_NAMES}", "${WRITEBACK_SMART_SIGNING_KEY_NAMES=smart-other,smart-epic}"
            )
        },
    )
    assert key_vault_role_problems(granted, repo) == []


def test_key_vault_rule_ignores_keys_kept_in_files(tmp_path: Path, infra: Infra) -> None:
    repo = kv_targets(tmp_path / "repo", "file:/secrets/epic.pem")
    assert key_vault_role_problems(infra, repo) == []


# --- (e) every identity-based connection has its settings and roles ------------------------------------------------


def test_identity_connections_have_settings_and_roles(infra: Infra) -> None:
    assert identity_connection_problems(infra) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "app/rbac.bicep",
            "roleDefinitions', serviceBusDataReceiver)",
            "roleDefinitions', serviceBusDataSender)",
            "needs Azure Service Bus Data Receiver",
        ),
        (
            "app/rbac.bicep",
            "roleDefinitions', serviceBusDataSender)",
            "roleDefinitions', serviceBusDataReceiver)",
            "the app's ServiceBusConnection client: the identity needs Azure Service Bus Data Sender",
        ),
        (
            "app/rbac.bicep",
            "roleDefinitions', storageBlobDataOwner)",
            "roleDefinitions', storageTableDataContributor)",
            "host storage (AzureWebJobsStorage): the identity needs Storage Blob Data Owner",
        ),
        (
            "app/rbac.bicep",
            "roleDefinitions', storageQueueDataContributor)",
            "roleDefinitions', storageTableDataContributor)",
            "the identity needs Storage Queue Data Contributor",
        ),
        (
            "app/api.bicep",
            "ServiceBusConnection__credential: 'managedidentity'",
            "ServiceBusConnection__credential: 'connectionstring'",
            "ServiceBusConnection__credential must be 'managedidentity'",
        ),
        (
            "app/api.bicep",
            "AzureWebJobsStorage__clientId: identityClientId",
            "AzureWebJobsStorage__clientId: storageQueueEndpoint",
            "AzureWebJobsStorage__clientId must be the app's user-assigned identity's client id",
        ),
        (
            "app/api.bicep",
            "AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint",
            "",
            "AzureWebJobsStorage__queueServiceUri (or AzureWebJobsStorage__accountName) not set",
        ),
        (
            "app/api.bicep",
            "WritebackStorage__tableServiceUri: storageTableEndpoint",
            "",
            "WritebackStorage__tableServiceUri not set",
        ),
    ],
)
def test_connection_rule_catches_a_missing_setting_or_role(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    problems = identity_connection_problems(edited_infra(tmp_path, {file: replace(old, new)}))
    assert any(expected in p for p in problems), problems


def test_connection_rule_catches_a_binding_with_no_settings(tmp_path: Path, infra: Infra) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("function_app.py", "host.json"):
        shutil.copy(REPO / name, repo / name)
    for folder in ("orchestrators", "activities"):
        shutil.copytree(REPO / folder, repo / folder)
    (repo / "orchestrators" / "events.py").write_text(
        "import azure.functions as func\n\nbp = func.Blueprint()\n\n\n"
        '@bp.service_bus_queue_trigger(arg_name="m", queue_name="q", connection="EventsBus")\n'
        "def on_event(m: func.ServiceBusMessage) -> None:\n    pass\n",
        encoding="utf-8",
    )
    problems = identity_connection_problems(infra, repo)
    assert any(
        "orchestrators/events.py:on_event" in p and "EventsBus__fullyQualifiedNamespace not set" in p for p in problems
    )
    assert any("EventsBus__credential must be 'managedidentity'" in p for p in problems)


def test_planted_bicep_snippets_parse() -> None:
    # The snippets above must be Bicep the parser reads, or a rule would pass on an empty tree.
    assert parse_bicep(UNGUARDED)["modules"]["fhirRbac"]
