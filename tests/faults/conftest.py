"""The fault-injection suite: the gateway as a separate process (the local runtime), killed at its crash checkpoints,
in front of a FHIR server that fails at random, and under duplicate storms and concurrent writers.

Each test records what it sent and what was acknowledged in an :class:`Invariants`, which then checks, against the
FHIR server's ``_history`` and the lineage API, what DESIGN.md §11 asks: every acknowledged change ends (a terminal
state) within a bound; at most one downstream version and one Provenance per change; no lost update (a completed
change's version is in the history, and each written version's predecessor is the version its plan read); nothing
written that needed an approval it did not get; and the PHI canary planted in every submitted resource appears in
neither the gateway's log nor the lineage. The figures of the run go to ``faults-summary.json`` in pytest's base
temporary directory and are printed at the end of the session.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import (
    AUDIT,
    TERMINAL,
    Gateway,
    gateway,
    gateway_settings,
    put_patient,
    spawn_gateway,
    stop_gateway,
    wait_ready,
)
from tools.services.process import REPO_ROOT, free_port

if TYPE_CHECKING:
    from tools.services.fhir_server import FhirServer

# ``gateway``: the e2e suite's session gateway, for the modules that send it bad input (one that restarts or
# reconfigures its gateway defines a fixture of that name of its own).
__all__ = ["AUDIT", "TERMINAL", "Gateway", "gateway", "stop_gateway"]

CHANGE_TAG = "urn:writeback:change"
SUMMARY_FILE = "faults-summary.json"
FIGURES_KEY = pytest.StashKey[dict[str, Any]]()

# --- the gateway, restartable on the same state ---------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    azurite: Any
    token_endpoint: Any
    fhir_server: FhirServer
    fhir_token: str


@dataclass
class FaultGateway(Gateway):
    """A gateway plus what it takes to start another one on the same state, port and tables."""

    services: Services
    table_prefix: str


@pytest.fixture(scope="session")
def services(azurite: Any, token_endpoint: Any, fhir_server: FhirServer, fhir_token: str) -> Services:
    return Services(azurite, token_endpoint, fhir_server, fhir_token)


def launch_gateway(
    services: Services,
    state: Path,
    settings: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    table_prefix: str | None = None,
    instances: int = 2,
) -> FaultGateway:
    """Like ``tests.e2e.conftest.start_gateway`` (``settings`` are extra app settings, two instances by default), but
    the port and the table prefix can be given, so a gateway that died can be started again exactly where it was
    (same state dir, same URL, same tables)."""
    port = port or free_port()
    table_prefix = table_prefix or "flt" + uuid.uuid4().hex[:8]
    env = gateway_settings(services.azurite, services.token_endpoint, services.fhir_server, table_prefix, settings)
    proc = spawn_gateway(state, port, env, instances)
    gw = FaultGateway(
        base=f"http://127.0.0.1:{port}",
        log_path=state / "gateway.log",
        fhir_base=services.fhir_server.base_url,
        fhir_token=services.fhir_token,
        proc=proc,
        state=state,
        instances=instances,
        services=services,
        table_prefix=table_prefix,
    )
    wait_ready(gw, timeout=60)
    return gw


@contextmanager
def gateway_running(
    services: Services, state: Path, settings: Mapping[str, str] | None = None
) -> Iterator[FaultGateway]:
    """A gateway launched for a block (``settings`` are extra app settings), stopped when it ends."""
    gw = launch_gateway(services, state, settings)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def targets_with_timeout(directory: Path, seconds: float) -> dict[str, str]:
    """The setting for a copy of ``config/targets.yaml`` whose targets time out after ``seconds``: an injected
    delay just above it is a client timeout, without tests waiting the configured 10 s."""
    targets = yaml.safe_load((REPO_ROOT / "config" / "targets.yaml").read_text())
    for target in targets["targets"].values():
        target["timeout_seconds"] = seconds
    path = directory / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))
    return {"WRITEBACK_TARGETS_FILE": str(path)}


def restart_gateway(gw: FaultGateway, settings: Mapping[str, str] | None = None) -> FaultGateway:
    """Start the gateway again on the same state dir, port and tables, with only ``settings`` as extra settings."""
    stop_gateway(gw)
    port = int(gw.base.rsplit(":", 1)[1])
    return launch_gateway(
        gw.services, gw.state, settings, port=port, table_prefix=gw.table_prefix, instances=gw.instances
    )


def wait_until_dead(gw: Gateway, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (code := gw.proc.poll()) is None:
        assert time.monotonic() < deadline, "the gateway did not reach its crash checkpoint"
        time.sleep(0.05)
    return code


# --- resources ----------------------------------------------------------------------------------------------


def new_patient(gw: Gateway, canary: str, **extra: Any) -> dict[str, Any]:
    """A fresh Patient written straight to the target, with the canary in its address (so the gateway reads the
    canary too), as stored."""
    address = [{"line": [f"1 {canary} Street"], "city": "Leeds"}]
    return put_patient(gw, f"f-{uuid.uuid4().hex[:12]}", address=address, **extra)


def move_city(gw: Gateway, ref: str, current: dict[str, Any], city: str) -> httpx.Response:
    """Another system's write straight to the target: ``current`` (the version of ``ref`` it read) with its first
    address moved to ``city``, version-checked with If-Match, and without the gateway's tags."""
    moved = {**without_meta(current), "address": [{**current["address"][0], "city": city}]}
    return httpx.put(
        f"{gw.fhir_base}/{ref}",
        json=moved,
        headers={
            "Authorization": f"Bearer {gw.fhir_token}",
            "Content-Type": "application/fhir+json",
            "If-Match": f'W/"{current["meta"]["versionId"]}"',
        },
        timeout=10,
    )


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def update_body(patient: dict[str, Any], reason: str, **changes: Any) -> dict[str, Any]:
    return {
        "target": "local-ehr",
        "operation": "update",
        "resource": {**without_meta(patient), **changes},
        "reason": reason,
    }


def history(gw: Gateway, ref: str) -> list[dict[str, Any]]:
    """Every version of ``ref``, oldest first."""
    resp = gw.fhir(f"{ref}/_history")
    assert resp.status_code == 200, resp.text
    return [e["resource"] for e in reversed(resp.json().get("entry", []))]


def tag_codes(resource: dict[str, Any], system: str = CHANGE_TAG) -> set[str]:
    return {t.get("code") for t in (resource.get("meta") or {}).get("tag", []) if t.get("system") == system}


# --- invariants ---------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """One change a client meant to make: every attempt at submitting it and what came back."""

    label: str
    key: str
    body: dict[str, Any]
    app: str = "crm"
    user: str = "user-1"
    approval_withheld: bool = False  # needs an approval that is never given: nothing may be written
    codes: list[int | str] = field(default_factory=list)
    change_ids: set[str] = field(default_factory=set)
    final: dict[str, Any] | None = None
    lineage: list[dict[str, Any]] | None = None

    @property
    def change_id(self) -> str | None:
        return next(iter(self.change_ids)) if len(self.change_ids) == 1 else None

    @property
    def ref(self) -> str | None:
        if self.body.get("resourceRef"):
            return str(self.body["resourceRef"])
        resource = self.body.get("resource") or {}
        if self.body.get("operation") != "create" and resource.get("id"):
            return f"{resource['resourceType']}/{resource['id']}"
        return None


class Invariants:
    """Records submissions and acknowledgements, then checks the suite's invariants against the target and lineage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.canary = f"CANARY{uuid.uuid4().hex[:16]}"
        self.submissions: list[Submission] = []
        self.counts: Counter[str] = Counter()
        self.logs: set[Path] = set()
        self.checked: dict[str, Any] = {}
        self.notes: dict[str, Any] = {}  # test-specific figures, e.g. the faults the FHIR server served
        self._lock = threading.Lock()

    # -- the client side ---------------------------------------------------------------------------------------

    def new(self, body: dict[str, Any], *, label: str = "", key: str | None = None, **kw: Any) -> Submission:
        assert self.canary in json.dumps(body), "every submitted resource carries the canary"
        sub = Submission(label=label, key=key or f"{label or 'k'}-{uuid.uuid4()}", body=body, **kw)
        with self._lock:
            self.submissions.append(sub)
        return sub

    def submit(self, gw: Gateway, body: dict[str, Any], *, retry_for: float = 15.0, **kw: Any) -> Submission:
        sub = self.new(body, **kw)
        self.resubmit(gw, sub, retry_for=retry_for)
        return sub

    def resubmit(self, gw: Gateway, sub: Submission, *, retry_for: float = 15.0) -> httpx.Response | None:
        """What a good client does: the same request with the same key after a connection error, a 409 (still
        being taken in) or a 5xx, until 202 or ``retry_for`` seconds have passed."""
        deadline = time.monotonic() + retry_for
        while True:
            resp = self.attempt(gw, sub)
            if resp is not None and (resp.status_code == 202 or (resp.status_code < 500 and resp.status_code != 409)):
                return resp
            if time.monotonic() >= deadline:
                return resp
            time.sleep(0.2)

    def attempt(self, gw: Gateway, sub: Submission) -> httpx.Response | None:
        """One POST of the submission; thread-safe."""
        self.track(gw)
        try:
            resp = gw.submit(sub.body, key=sub.key, app=sub.app, user=sub.user)
        except httpx.TransportError as exc:
            with self._lock:
                sub.codes.append(type(exc).__name__)
                self.counts["requests"] += 1
                self.counts["transport_errors"] += 1
            return None
        with self._lock:
            sub.codes.append(resp.status_code)
            self.counts["requests"] += 1
            self.counts["5xx"] += resp.status_code >= 500
            if resp.status_code == 202:
                sub.change_ids.add(resp.json()["changeId"])
        return resp

    def track(self, gw: Gateway) -> None:
        self.logs.add(gw.log_path)

    # -- reading the gateway back ------------------------------------------------------------------------------

    def _get(self, gw: Gateway, path: str) -> httpx.Response | None:
        try:
            resp = httpx.get(f"{gw.api}/{path}", headers=gw.headers("auditor", AUDIT), timeout=30)
        except httpx.TransportError:
            with self._lock:
                self.counts["transport_errors"] += 1
            return None
        with self._lock:
            self.counts["5xx"] += resp.status_code >= 500
        return resp

    def wait_for(self, gw: Gateway, sub: Submission, statuses: set[str], timeout: float) -> str:
        """Poll the change until its status is one of ``statuses``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self._get(gw, f"changes/{sub.change_id}")
            status = resp.json()["status"] if resp is not None and resp.status_code in (200, 202) else None
            if status in statuses:
                return str(status)
            assert time.monotonic() < deadline, f"{sub.label}: change {sub.change_id} still {status}"
            time.sleep(0.1)

    def settle(self, gw: Gateway, bound: float) -> None:
        """Poll every acknowledged change until it is terminal or ``bound`` seconds have passed."""
        deadline = time.monotonic() + bound
        pending = [s for s in self.acknowledged if s.final is None and s.change_id]
        while pending:
            for sub in pending:
                resp = self._get(gw, f"changes/{sub.change_id}")
                if resp is not None and resp.status_code == 200 and resp.json()["status"] in TERMINAL:
                    sub.final = resp.json()
            pending = [s for s in pending if s.final is None]
            if not pending or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    @property
    def acknowledged(self) -> list[Submission]:
        return [s for s in self.submissions if s.change_ids]

    # -- the checks --------------------------------------------------------------------------------------------

    def check(self, gw: Gateway, *, bound: float = 60.0) -> dict[str, Any]:
        """Settle, then check every invariant; fails listing every violation. Returns the figures."""
        violations = self.violations(gw, bound=bound)
        assert not violations, "invariants violated:\n  " + "\n  ".join(violations)
        return self.checked

    def violations(self, gw: Gateway, *, bound: float = 60.0) -> list[str]:
        """Settle, then every violation of an invariant, in words; the figures are kept in ``checked``."""
        self.settle(gw, bound)
        violations: list[str] = []
        histories: dict[str, list[dict[str, Any]]] = {}

        def versions_of(ref: str) -> list[dict[str, Any]]:
            if ref not in histories:
                histories[ref] = history(gw, ref)
            return histories[ref]

        duplicated: set[str] = set()
        phantoms: dict[str, str] = {}
        for sub in self.submissions:
            what = f"{sub.label or 'change'} (key {sub.key})"
            if len(sub.change_ids) > 1:
                violations.append(f"{what}: one key acknowledged as several changes {sorted(sub.change_ids)}")
                duplicated.add(sub.key)
            change_id = sub.change_id
            if change_id is None:
                continue
            if sub.final is None:
                violations.append(f"{what}: change {change_id} acknowledged but not terminal within {bound:.0f} s")
                continue
            status = sub.final["status"]
            resp = self._get(gw, f"changes/{change_id}/lineage")
            assert resp is not None and resp.status_code == 200, resp and resp.text
            sub.lineage = resp.json()["events"]
            violations += self._check_lineage(what, sub)

            refs = self._refs_of(gw, sub)
            written = [(ref, i, v) for ref in refs for i, v in enumerate(versions_of(ref)) if change_id in tag_codes(v)]
            provenances = gw.fhir(f"Provenance?_tag={CHANGE_TAG}|{change_id}").json().get("entry", [])
            if len(written) > 1 or len(provenances) > 1 or len(refs) > 1:
                duplicated.add(change_id)
                violations.append(
                    f"{what}: {len(written)} downstream versions, {len(provenances)} Provenances, "
                    f"{len(refs)} resources for change {change_id}"
                )
            wrote = status == "completed" and not (sub.final.get("result") or {}).get("noChange")
            if wrote and not written:
                violations.append(f"{what}: completed, but no version of {refs} carries change {change_id} (lost)")
            if wrote and written and written[0][2]["meta"]["versionId"] != sub.final["result"]["versionId"]:
                violations.append(f"{what}: result.versionId is not the version that carries the change tag")
            if status != "completed" and written:
                phantoms[change_id] = status
                if status != "failed":
                    violations.append(
                        f"{what}: ended {status}, yet version {written[0][2]['meta']['versionId']} "
                        f"of {written[0][0]} carries change {change_id}"
                    )
            if sub.approval_withheld and written:
                violations.append(f"{what}: written without the approval it needed")
            if wrote and len(written) == 1:
                ref, index, _ = written[0]
                violations += self._check_predecessor(what, sub, versions_of(ref), index)
        violations += self._check_canary()
        self.checked = self.figures(duplicated=len(duplicated), phantoms=len(phantoms))
        return violations

    def _refs_of(self, gw: Gateway, sub: Submission) -> list[str]:
        if sub.ref:
            return [sub.ref]
        rtype = sub.body["resource"]["resourceType"]
        found = gw.fhir(f"{rtype}?_tag={CHANGE_TAG}|{sub.change_id}").json().get("entry", [])
        return [f"{rtype}/{e['resource']['id']}" for e in found]

    def _check_lineage(self, what: str, sub: Submission) -> list[str]:
        assert sub.lineage is not None and sub.final is not None
        events = [e["event"] for e in sub.lineage]
        problems = []
        if json.dumps(sub.lineage).find(self.canary) >= 0:
            problems.append(f"{what}: the PHI canary is in the lineage")
        if [e["sequence"] for e in sub.lineage] != list(range(1, len(events) + 1)):
            problems.append(f"{what}: lineage sequence has gaps or repeats: {events}")
        if events[:1] != ["accepted"] or events.count("accepted") != 1:
            problems.append(f"{what}: lineage does not start with one 'accepted': {events}")
        terminal = [e for e in events if e in TERMINAL and e != "planned"]
        if sub.final["status"] != "planned" and terminal != [sub.final["status"]]:
            problems.append(f"{what}: lineage ends {terminal}, status is {sub.final['status']}: {events}")
        if sub.lineage[-1]["status"] != sub.final["status"]:
            problems.append(f"{what}: last lineage event is {sub.lineage[-1]}, status is {sub.final['status']}")
        if sub.final["status"] == "completed" and not sub.final["result"].get("noChange"):
            missing = [e for e in ("planned", "decided", "writing", "written", "verified") if e not in events]
            repeated = [e for e in ("written", "verified", "completed") if events.count(e) > 1]
            if missing or repeated:
                problems.append(f"{what}: lineage missing {missing}, repeated {repeated}: {events}")
        return problems

    def _check_predecessor(self, what: str, sub: Submission, versions: list[dict[str, Any]], index: int) -> list[str]:
        """The version a change wrote sits right after the version its plan read, and differs from it only in the
        paths the plan changed: nothing written in between was silently overwritten."""
        assert sub.final is not None and sub.lineage is not None
        written_event = next(e for e in sub.lineage if e["event"] == "written")
        expected = written_event["details"].get("ifMatch") or (sub.final.get("plan") or {}).get("currentVersion")
        if sub.body["operation"] == "create":
            return [] if index == 0 else [f"{what}: a create's version has a predecessor"]
        if index == 0:
            return [f"{what}: its version is the first of the resource (expected after {expected})"]
        before, mine = versions[index - 1], versions[index]
        problems = []
        if before["meta"]["versionId"] != expected:
            problems.append(
                f"{what}: wrote on top of {before['meta']['versionId']}, but its plan read {expected} (lost update)"
            )
        allowed = {p.split(".", 1)[1].split("[", 1)[0] for p in sub.final["plan"]["changedPaths"]} | {"meta"}
        touched = {k for k in set(before) | set(mine) if before.get(k) != mine.get(k)}
        if not touched <= allowed:
            problems.append(f"{what}: its version also changed {sorted(touched - allowed)} (overwrote another write)")
        return problems

    def _check_canary(self) -> list[str]:
        return [f"the PHI canary is in the gateway log {p}" for p in sorted(self.logs) if self.canary in _read(p)]

    def figures(self, *, duplicated: int | None = None, phantoms: int | None = None) -> dict[str, Any]:
        acked = self.acknowledged
        ended = [s for s in acked if s.final is not None]
        by_status = Counter(s.final["status"] for s in ended if s.final is not None)
        return {
            "cases": len(self.submissions),
            "requests": self.counts["requests"],
            "acknowledged": len(acked),
            "terminal": len(ended),
            "completed": by_status["completed"],
            "otherTerminal": dict(sorted((k, v) for k, v in by_status.items() if k != "completed")),
            "lost": len(acked) - len(ended),
            "duplicated": self.checked.get("duplicated", 0) if duplicated is None else duplicated,
            "writtenButNotCompleted": self.checked.get("writtenButNotCompleted", 0) if phantoms is None else phantoms,
            "5xx": self.counts["5xx"],
            "transportErrors": self.counts["transport_errors"],
            **({"notes": self.notes} if self.notes else {}),
        }


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# --- figures of the run -------------------------------------------------------------------------------------


class FaultFigures:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tests: dict[str, dict[str, Any]] = {}

    def add(self, test: str, figures: dict[str, Any]) -> None:
        self.tests[test] = figures

    def summary(self) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        other: Counter[str] = Counter()
        for figures in self.tests.values():
            for k, v in figures.items():
                if isinstance(v, int):
                    totals[k] += v
            other.update(figures["otherTerminal"])
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.started, 1),
            "totals": {**totals, "otherTerminal": dict(sorted(other.items()))},
            "tests": self.tests,
        }


@pytest.fixture(scope="session")
def fault_figures(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[FaultFigures]:
    figures = FaultFigures()
    yield figures
    summary = figures.summary()
    path = tmp_path_factory.getbasetemp() / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2))
    pytestconfig.stash[FIGURES_KEY] = {**summary, "path": str(path)}


@pytest.fixture
def invariants(request: pytest.FixtureRequest, fault_figures: FaultFigures) -> Iterator[Invariants]:
    inv = Invariants(request.node.name)
    yield inv
    fault_figures.add(request.node.nodeid.split("::", 1)[-1], inv.figures())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary = config.stash.get(FIGURES_KEY, None)
    if summary is None:
        return
    t = summary["totals"]
    other = ", ".join(f"{k} {v}" for k, v in t["otherTerminal"].items()) or "none"
    terminalreporter.write_sep("-", "fault-injection figures")
    for line in (
        f"cases tried {t.get('cases', 0)} (requests {t.get('requests', 0)}), acknowledged {t.get('acknowledged', 0)}, "
        f"terminal {t.get('terminal', 0)} (completed {t.get('completed', 0)}; {other})",
        f"lost {t.get('lost', 0)}, duplicated {t.get('duplicated', 0)}, "
        f"written but not completed {t.get('writtenButNotCompleted', 0)}, 5xx {t.get('5xx', 0)}, "
        f"connection errors {t.get('transportErrors', 0)}; {summary['seconds']} s",
        f"written to {summary['path']}",
    ):
        terminalreporter.write_line(line)
