"""The two sides of a contract suite over one Table-backed port: the in-memory fake, or the real adapter on Azurite
under a fresh table prefix."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from azure.data.tables import TableServiceClient

# A contract fixture's params: the fake, and the real adapter on Azurite (an integration test).
FAKE_OR_AZURITE = ["fake", pytest.param("azurite", marks=pytest.mark.integration)]

Port = TypeVar("Port")


def fake_or_table(request: pytest.FixtureRequest, fake: Callable[[], Port], table: Callable[..., Any]) -> Port:
    """``fake()`` for the ``fake`` param; else ``table(tables, prefix=...)`` on the session's Azurite, its tables
    created twice (creating them must be idempotent)."""
    if request.param == "fake":
        return fake()
    azurite = request.getfixturevalue("azurite")
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    adapter = table(tables, prefix="t" + uuid.uuid4().hex[:10])
    adapter.ensure_tables()
    adapter.ensure_tables()
    return adapter  # type: ignore[no-any-return]
