"""``make run EASYAUTH=1`` as a user runs it: the local OpenID provider comes up with the other services and is
named in ``.local/endpoints.json``; the gateway is behind the App Service Authentication emulation (a forged
``X-MS-CLIENT-PRINCIPAL`` gets 401, the health probe is excluded, sign-in goes to the provider); ``tools.sign_in``
gets a token that works with curl; Ctrl-C stops everything."""

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

from shared.api.caller_identity import encode_easyauth_principal
from tools.services.process import REPO_ROOT, dev_ports, port_open


@pytest.mark.e2e
def test_run_with_easyauth_signs_callers_in_through_the_local_provider(tmp_path: Path) -> None:
    ports = dev_ports()
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "WRITEBACK_DEV_STATE_DIR": str(tmp_path)}
    env |= {"WRITEBACK_DEV_EASYAUTH": "1", "WRITEBACK_DEV_INSTANCES": "1"}
    env.pop("WRITEBACK_DEV_INSTANCE_GROUPS", None)
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.services", "--with-gateway"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        endpoints_file = tmp_path / "endpoints.json"
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            if endpoints_file.exists():
                try:
                    if httpx.get(json.loads(endpoints_file.read_text())["api"] + "/health", timeout=2).is_success:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        endpoints = json.loads(endpoints_file.read_text())
        api, openid = endpoints["api"], endpoints["openId"]
        assert openid["issuer"].startswith(f"http://127.0.0.1:{ports['WRITEBACK_DEV_OPENID_PORT']}/")
        assert Path(openid["clientSecretsFile"]).parent == tmp_path / "openid"
        assert "OpenID provider" in log.read_text() and "App Service Authentication emulated" in log.read_text()

        forged = {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("crm", ["Writeback.Audit"], user_id="u")}
        assert httpx.get(f"{api}/changes?status=awaiting_approval", headers=forged, timeout=10).status_code == 401
        sign_in = httpx.get(api.removesuffix("/api/v1") + "/.auth/login/aad", timeout=10)
        assert sign_in.status_code == 302 and sign_in.headers["location"].startswith(
            openid["issuer"].removesuffix("/v2.0") + "/oauth2/v2.0/authorize?"
        )

        argv = [sys.executable, "-m", "tools.sign_in", "--client", "crm", "--user", "olive@writeback.example"]
        token = subprocess.run(
            [*argv, "--endpoints", str(endpoints_file)], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert token.returncode == 0, token.stderr
        bearer = {"Authorization": f"Bearer {token.stdout.strip()}"}
        assert httpx.get(f"{api}/changes?status=awaiting_approval", headers=bearer, timeout=10).status_code == 200
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text(errors="replace")
    assert [name for name, port in ports.items() if port_open(port)] == []
