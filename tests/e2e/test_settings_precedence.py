"""A setting the user has set wins over ``.local/endpoints.json``: ``make gateway`` (``python -m devhost
--local-services``) points the app at the local services, except where a variable is already set, as
``local.settings.json`` values never override the environment."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, put_patient, spawn_gateway, stop_gateway, wait_ready
from tools.services.process import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e


def test_a_target_url_set_in_the_environment_wins_over_the_endpoints_file(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, tmp_path: Path
) -> None:
    """Before, the file's values were written over the environment, so the change went to the file's URL (which
    answers nothing but 404 here) and failed."""
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(
        json.dumps(
            {
                "api": "http://127.0.0.1:1/api/v1",
                "fhir": {"local-ehr": f"{fhir_server.base_url}/not-the-target"},
                "fhirScopes": {"local-ehr": "api://local-ehr/.default"},
                "identityEndpoint": token_endpoint.url,
                "identityHeader": token_endpoint.identity_header,
                "storageConnectionString": azurite.connection_string,
            }
        )
    )
    env = {
        **os.environ,
        "WRITEBACK_TARGET_LOCAL_EHR_BASE_URL": fhir_server.base_url,
        "WRITEBACK_TABLE_PREFIX": "env" + uuid.uuid4().hex[:8],
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("IDENTITY_SERVER_THUMBPRINT", None)
    port = free_port()
    proc = spawn_gateway(tmp_path, port, env, 1, ["--local-services", str(endpoints)])
    base = f"http://127.0.0.1:{port}"
    gw = Gateway(base, tmp_path / "gateway.log", fhir_server.base_url, fhir_token, proc, state=tmp_path, instances=1)
    try:
        wait_ready(gw, timeout=60)
        patient = put_patient(gw, f"p-{uuid.uuid4().hex[:12]}")
        body = {
            "target": "local-ehr",
            "operation": "update",
            "resource": {
                **{k: v for k, v in patient.items() if k != "meta"},
                "telecom": [{"system": "phone", "value": "2"}],
            },
            "reason": "new phone",
        }
        resp = gw.submit(body)
        assert resp.status_code == 202, resp.text
        done = gw.wait(resp.json()["changeId"])
        assert done["status"] == "completed", done
        assert gw.fhir(f"Patient/{patient['id']}").json()["telecom"] == [{"system": "phone", "value": "2"}]
    finally:
        stop_gateway(gw)
