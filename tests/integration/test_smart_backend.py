"""SMART Backend Services against the real local SMART token endpoint (``tools/smart_token_endpoint.py``).

The endpoint runs as a child process with a JWKS registering one RSA (RS384) and one EC P-384 (ES384) key for the
client. The last test drives ``HttpFhirClient`` for a ``smart_backend_services`` target against a loopback recorder
(the local FHIR server accepts only the managed-identity endpoint's RS256 tokens).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import token_provider_for
from shared.adapters.smart_backend import (
    ASSERTION_TYPE,
    SigningKey,
    SmartBackendTokenProvider,
    load_key_file,
    reset_smart_providers,
)
from shared.core.errors import AuthError, RetryableError
from shared.core.targets import TargetConfig
from tests.support import from_threads
from tools.services.smart_token_endpoint import SmartTokenEndpoint, start_smart_token_endpoint

pytestmark = pytest.mark.integration

CLIENT_ID = "writeback-gateway"
SCOPE = "system/Patient.rs system/Observation.c"


def _write_pem(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("smart-keys")
    return {
        "RS384": _write_pem(d / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ES384": _write_pem(d / "ec.pem", ec.generate_private_key(ec.SECP384R1())),
        "rogue": _write_pem(d / "rogue.pem", ec.generate_private_key(ec.SECP384R1())),
    }


@pytest.fixture(scope="module")
def smart_endpoint(
    key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmartTokenEndpoint]:
    jwks = {"keys": [load_key_file(key_files[alg]).public_jwk() for alg in ("RS384", "ES384")]}
    endpoint = start_smart_token_endpoint(client_id=CLIENT_ID, jwks=jwks, log_dir=tmp_path_factory.mktemp("logs"))
    yield endpoint
    endpoint.stop()


def _provider(endpoint: SmartTokenEndpoint, key: Any) -> SmartBackendTokenProvider:
    return SmartBackendTokenProvider(endpoint.url, CLIENT_ID, key)


def _introspect(endpoint: SmartTokenEndpoint, token: str) -> dict[str, Any]:
    resp = httpx.post(endpoint.introspection_url, data={"token": token}, timeout=5)
    resp.raise_for_status()
    return dict(resp.json())


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_both_algorithms_get_a_token(alg: str, smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]) -> None:
    key = load_key_file(key_files[alg])
    assert key.algorithm == alg
    token = _provider(smart_endpoint, key).token(SCOPE)
    info = _introspect(smart_endpoint, token)
    assert info["active"] is True and info["scope"] == SCOPE and info["client_id"] == CLIENT_ID


def test_replayed_assertion_is_refused(smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]) -> None:
    assertion = _provider(smart_endpoint, load_key_file(key_files["ES384"])).client_assertion()
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    first = httpx.post(smart_endpoint.url, data=form, timeout=5)
    assert first.status_code == 200
    again = httpx.post(smart_endpoint.url, data=form, timeout=5)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_unregistered_key_is_refused(smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]) -> None:
    with pytest.raises(AuthError) as caught:
        _provider(smart_endpoint, load_key_file(key_files["rogue"])).token(SCOPE)
    assert caught.value.downstream_status == 401 and "invalid_client" in str(caught.value)


def test_wrong_key_under_a_registered_kid_is_refused(
    smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]
) -> None:
    registered, rogue = load_key_file(key_files["ES384"]), load_key_file(key_files["rogue"])
    impostor = SigningKey(kid=registered.kid, algorithm="ES384", private_key=rogue.private_key)
    with pytest.raises(AuthError) as caught:
        _provider(smart_endpoint, impostor).token(SCOPE)
    assert caught.value.downstream_status == 401


def test_tokens_are_cached(smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]) -> None:
    provider = _provider(smart_endpoint, load_key_file(key_files["RS384"]))
    before = smart_endpoint.stats()["tokens_issued"]
    results = from_threads(lambda: provider.token(SCOPE), 8)
    results += [provider.token(SCOPE) for _ in range(20)]
    assert len(set(results)) == 1 and len(results) == 28
    assert smart_endpoint.stats()["tokens_issued"] - before == 1


def test_endpoint_failure_is_retryable_and_not_cached(
    smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path]
) -> None:
    provider = _provider(smart_endpoint, load_key_file(key_files["ES384"]))
    smart_endpoint.fail_next(503)
    with pytest.raises(RetryableError) as caught:
        provider.token(SCOPE)
    assert caught.value.downstream_status == 503
    assert _introspect(smart_endpoint, provider.token(SCOPE))["active"] is True


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        self.authorizations: list[str | None] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/fhir/R4"


class _RecorderHandler(BaseHTTPRequestHandler):
    server: _Recorder
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        body = json.dumps({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("ETag", 'W/"3"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_fhir_client_sends_the_smart_token(
    smart_endpoint: SmartTokenEndpoint, key_files: dict[str, Path], recorder: _Recorder
) -> None:
    target = TargetConfig.model_validate(
        {
            "id": "ehr",
            "base_url": recorder.url,
            "auth": {
                "type": "smart_backend_services",
                "token_url": smart_endpoint.url,
                "client_id": CLIENT_ID,
                "key_name": f"file:{key_files['ES384']}",
                "scope": SCOPE,
            },
        }
    )
    reset_smart_providers()
    try:
        tokens = token_provider_for(target, managed_identity_client_id=None)
        assert isinstance(tokens, SmartBackendTokenProvider)
        before = smart_endpoint.stats()["tokens_issued"]
        with httpx.Client() as http:
            client = HttpFhirClient(target, http=http, tokens=tokens)
            assert [client.read("Patient", "p1").version_id for _ in range(3)] == ["3", "3", "3"]
        assert smart_endpoint.stats()["tokens_issued"] - before == 1
        (header,) = set(recorder.authorizations)
        assert header is not None and header.startswith("Bearer ")
        info = _introspect(smart_endpoint, header.removeprefix("Bearer "))
        assert info["active"] is True and info["scope"] == SCOPE
    finally:
        reset_smart_providers()
