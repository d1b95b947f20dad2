"""Seed the local FHIR server with the demo Patients (fixed ids, so the walkthrough's commands work as written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

SEED_FILE = Path(__file__).resolve().parents[1] / "seed" / "patients.json"


def demo_patients() -> list[dict[str, Any]]:
    patients: list[dict[str, Any]] = json.loads(SEED_FILE.read_text())
    return patients


def bearer_token(identity_endpoint: str, identity_header: str, resource: str) -> str:
    resp = httpx.get(
        identity_endpoint,
        params={"api-version": "2019-08-01", "resource": resource},
        headers={"X-IDENTITY-HEADER": identity_header},
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def seed_patients(fhir_base: str, token: str) -> list[str]:
    """PUT each demo Patient (an update that creates it with its id); returns the references."""
    refs = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}) as http:
        for patient in demo_patients():
            resp = http.put(f"{fhir_base}/Patient/{patient['id']}", content=json.dumps(patient), timeout=10)
            resp.raise_for_status()
            refs.append(f"Patient/{patient['id']}")
    return refs
