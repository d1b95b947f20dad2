"""`make services` as a Core Tools user runs it: it starts the local services and writes ``local.settings.json``
for ``func start``, holding every setting the bindings, host.json and the app read, and pointing at services that
answer: the storage connection reaches Azurite, the identity endpoint gives a token the FHIR server takes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient

from tests.core_tools_settings import build_app_parts, missing_host_settings
from tools.services.process import REPO_ROOT, dev_ports


@pytest.mark.e2e
def test_make_services_writes_local_settings_for_core_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = dev_ports()
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "WRITEBACK_DEV_STATE_DIR": str(tmp_path)}
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": {"MY_OWN_SETTING": "kept"}}))
    log = tmp_path / "services.log"
    # What `make services` runs (see the Makefile), with the file in a temporary folder.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.services", "--local-settings", str(settings_file)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "endpoints.json").exists():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        written = json.loads(settings_file.read_text())
        values: dict[str, str] = written["Values"]
        assert written["IsEncrypted"] is False
        assert values["MY_OWN_SETTING"] == "kept"
        assert missing_host_settings(values) == []
        build_app_parts(monkeypatch, values, "table_service", "blob_service", "targets", "policy", "authenticator")

        # The services it names answer: Azurite by the host's own connection, the FHIR server with a token from the
        # identity endpoint, as the app's ManagedIdentityCredential gets one.
        with TableServiceClient.from_connection_string(values["AzureWebJobsStorage"]) as tables:
            list(tables.list_tables())
        token = httpx.get(
            values["IDENTITY_ENDPOINT"],
            params={"api-version": "2019-08-01", "resource": "api://local-ehr"},
            headers={"X-IDENTITY-HEADER": values["IDENTITY_HEADER"]},
            timeout=10,
        ).json()["access_token"]
        patient = httpx.get(
            values["WRITEBACK_TARGET_LOCAL_EHR_BASE_URL"] + "/Patient/pat-ada",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert patient.status_code == 200, patient.text
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text(errors="replace")
