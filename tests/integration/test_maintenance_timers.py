"""The maintenance timer, called as the host calls it, against Azurite: expired rows go, live ones stay."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient

from shared import bootstrap
from shared.adapters.table_approval_nonce_store import TableApprovalNonceStore
from shared.core.errors import AlreadyExistsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_functions() -> dict[str, func.FunctionBuilder]:
    import function_app

    function_app.app.functions_bindings = None
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


@pytest.mark.integration
def test_the_purge_timer_deletes_expired_approval_link_nonces(
    azurite, app_functions, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("WRITEBACK_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("WRITEBACK_TARGETS_FILE", str(REPO / "config" / "targets.yaml"))
    monkeypatch.setenv("WRITEBACK_TABLE_PREFIX", prefix)
    monkeypatch.setenv("WRITEBACK_APPROVAL_SIGNING_KEYS", "k1:" + base64.b64encode(os.urandom(32)).decode())
    nonces = TableApprovalNonceStore(
        TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix
    )
    nonces.ensure_tables()
    now = datetime.now(UTC)
    nonces.use("expired-nonce", "change-1", now - timedelta(hours=1))
    nonces.use("live-nonce", "change-1", now + timedelta(hours=1))
    bootstrap.reset()
    try:
        app_functions["purge_expired_keys"].get_user_function()(None)
    finally:
        bootstrap.reset()

    nonces.use("expired-nonce", "change-1", now + timedelta(hours=1))  # gone, so it can be stored again
    with pytest.raises(AlreadyExistsError):
        nonces.use("live-nonce", "change-1", now + timedelta(hours=1))
