"""What the benchmark runs on: request bodies and the caller, the gateway's services wired in-process (over the fakes
or the real Table adapters), and the local stack (token endpoint, FHIR server, Azurite, gateway) started and stopped.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.adapters.storage_transport import EnvironmentOnceTransport
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.adapters.table_sweep_state import TableSweepState
from shared.api.caller_identity import ROLE_SUBMIT
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.pipeline import ChangePipeline
from shared.bootstrap import build
from shared.config import Settings
from shared.core.models import Principal
from shared.core.targets import TargetConfig, TargetRegistry
from shared.fakes.counting import CountingProxy
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState
from tools.services.azurite import start_azurite
from tools.services.fhir_server import start_fhir_server
from tools.services.process import REPO_ROOT
from tools.services.token_endpoint import start_token_endpoint

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient

FHIR_AUDIENCE = "api://local-ehr"
SUBMIT = ["Writeback.Submit"]
AUDIT = ["Writeback.Audit"]


# --- requests -----------------------------------------------------------------------------------------------------


def patient(pid: str, phone: str = "555-0000") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Bench", "given": ["Pat"]}],
        "gender": "female",
        "birthDate": "1980-01-01",
        "telecom": [{"system": "phone", "value": phone, "use": "home"}],
    }


def change_body(pid: str, phone: str) -> bytes:
    body = {"target": "local-ehr", "operation": "update", "resource": patient(pid, phone)}
    return json.dumps(body).encode()


def in_process_principal() -> Principal:
    """The caller of the in-process runs: ``crm`` with the submit role."""
    return Principal(app_id="crm", user_id="u1", roles=[ROLE_SUBMIT])


# --- services wired in-process ------------------------------------------------------------------------------------


@dataclass
class InProcessServices:
    """The intake and the pipeline wired in-process, every port behind a ``CountingProxy``.

    ``table_calls`` counts the calls at the storage ports (one call is one Table round trip; payloads not counted);
    ``store_seconds[0]`` / ``other_seconds[0]`` add up the CPU spent inside the storage ports (fakes or Table
    adapters, payloads included) and inside the other fakes (publisher, FHIR). The caller resets them per change.
    ``fhir`` is the fake FHIR server the pipeline writes to; assign a fresh one to replace it.
    """

    intake: IntakeService
    journal: ChangeJournal
    pipeline: ChangePipeline
    table_calls: Counter[str]
    store_seconds: list[float]
    other_seconds: list[float]
    fhir: FakeFhirClient


def build_in_process_services(
    tables: TableServiceClient | None = None, *, prefix: str = "benchcpu"
) -> InProcessServices:
    """The services of the in-process runs: over the fakes, or over the real Table adapters when ``tables`` is given
    (tables named with ``prefix``, created if missing), wired by the gateway's composition root."""
    targets = TargetRegistry.from_file(REPO_ROOT / "config" / "targets.yaml", {})
    calls: Counter[str] = Counter()
    change_store: Any = FakeChangeStore()
    idempotency_store: Any = FakeIdempotencyStore()
    sweep_state: Any = FakeSweepState()
    if tables is not None:
        change_store = TableChangeStore(tables, prefix=prefix)
        idempotency_store = TableIdempotencyStore(tables, prefix=prefix)
        sweep_state = TableSweepState(tables, prefix=prefix)
        for store in (change_store, idempotency_store, sweep_state):
            store.ensure_tables()
    services: InProcessServices | None = None

    def fhir(_: TargetConfig) -> Any:
        # the FHIR server in use when the pipeline asks for a client
        assert services is not None
        return CountingProxy(services.fhir, Counter(), "fhir", spent=others)

    # CPU seconds inside the ports: the storage ports (fakes, or the real Table adapters), and the other fakes
    stores: list[float] = [0.0]
    others: list[float] = [0.0]
    gateway = build(
        Settings(
            targets_file=REPO_ROOT / "config" / "targets.yaml",
            policy_file=REPO_ROOT / "config" / "policy.yaml",
            max_body_bytes=1_048_576,
        ),
        targets=targets,
        change_store=CountingProxy(change_store, calls, "changes", spent=stores),
        idempotency_store=CountingProxy(idempotency_store, calls, "idempotency", spent=stores),
        sweep_state=CountingProxy(sweep_state, calls, "sweep", spent=stores),
        payload_store=CountingProxy(FakePayloadStore(), Counter(), "payloads", spent=stores),
        publisher=CountingProxy(FakeMessagePublisher(), Counter(), "publisher", spent=others),
        fhir=fhir,
    )
    intake, journal, pipeline = gateway.intake, gateway.journal, gateway.pipeline
    services = InProcessServices(intake, journal, pipeline, calls, stores, others, FakeFhirClient())
    return services


def table_service(connection_string: str) -> TableServiceClient:
    """A Table service client as the gateway builds one (proxy and CA-bundle environment read once)."""
    from azure.data.tables import TableServiceClient

    return TableServiceClient.from_connection_string(connection_string, transport=EnvironmentOnceTransport())


# --- the local stack ----------------------------------------------------------------------------------------------


@contextmanager
def local_stack(tmp: Path, instances: int = 1) -> Iterator[dict[str, Any]]:
    """Token endpoint, FHIR server (token checking on), Azurite in memory and the gateway (``instances`` runtime
    processes on one state); all stopped at the end.

    The gateway runs with a copy of ``config/targets.yaml`` without ``rate_limit_per_second``.
    """
    from tests.e2e.conftest import start_gateway, stop_gateway

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp / "signing-key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    logs = tmp / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        token_endpoint = start_token_endpoint(key_file=key_file, log_dir=logs)
        stack.callback(token_endpoint.stop)
        fhir = start_fhir_server(jwks_url=token_endpoint.jwks_url, audience=FHIR_AUDIENCE, log_dir=logs)
        stack.callback(fhir.stop)
        azurite = start_azurite(log_dir=logs)
        stack.callback(azurite.stop)
        resp = httpx.get(
            token_endpoint.url,
            params={"api-version": "2019-08-01", "resource": FHIR_AUDIENCE},
            headers={"X-IDENTITY-HEADER": token_endpoint.identity_header},
        )
        resp.raise_for_status()
        token = str(resp.json()["access_token"])
        targets = yaml.safe_load((REPO_ROOT / "config" / "targets.yaml").read_text())
        for target in targets["targets"].values():
            target.pop("rate_limit_per_second", None)
        targets_file = tmp / "targets.yaml"
        targets_file.write_text(yaml.safe_dump(targets))
        services: dict[str, Any] = {
            "azurite": azurite,
            "token_endpoint": token_endpoint,
            "fhir_server": fhir,
            "fhir_token": token,
        }
        settings = {"WRITEBACK_TARGETS_FILE": str(targets_file), "PYTHONUNBUFFERED": "1"}
        state = tmp / "gateway"
        state.mkdir()
        gw = start_gateway(**services, state=state, instances=instances, **settings)
        stack.callback(stop_gateway, gw)
        groups = {"runtime": gw.proc.pid, "Azurite": azurite.process.pid, "FHIR server": fhir.process.pid}
        yield {
            "gw": gw,
            "fhir": fhir,
            "token": token,
            "state": state,
            "azurite": azurite,
            "groups": groups,
            "another_gateway": lambda instances, **extra: another_gateway(
                tmp, services, {**settings, **extra}, instances
            ),
        }


@contextmanager
def another_gateway(
    tmp: Path, services: dict[str, Any], settings: dict[str, str], instances: int
) -> Iterator[tuple[Any, Path]]:
    """A second gateway on the same services (its own tables and state), stopped at the end; with its state."""
    from tests.e2e.conftest import start_gateway, stop_gateway

    state = tmp / f"gateway-{instances}-instances-{uuid.uuid4().hex[:6]}"
    state.mkdir()
    gw = start_gateway(**services, state=state, instances=instances, **settings)
    try:
        yield gw, state
    finally:
        stop_gateway(gw)
