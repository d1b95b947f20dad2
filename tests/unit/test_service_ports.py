"""Ports picked for local services: never in the kernel's ephemeral range, never one that is already bound.

A port from the kernel's ephemeral range (what ``bind(0)`` hands out) can be taken at any moment by an outbound
connection's local end, between picking it and the service listening on it (``EADDRINUSE``); so ports are picked
above that range, and each is checked to be bindable.
"""

from __future__ import annotations

import socket

from tools.services import process
from tools.services.process import dev_ports, free_port, free_port_block, listen_port_range, port_bindable


def _ephemeral() -> range:
    low, high = process._ephemeral_range()
    return range(low, high + 1)


def test_picked_ports_are_outside_the_ephemeral_range() -> None:
    ephemeral = _ephemeral()
    picked = [free_port() for _ in range(50)] + [free_port_block(3) + i for _ in range(20) for i in range(3)]
    assert not [p for p in picked if p in ephemeral]
    ports = dev_ports()
    assert not [p for p in ports.values() if p in ephemeral]
    azurite = ports["WRITEBACK_DEV_AZURITE_PORT"]
    others = {v for k, v in ports.items() if k != "WRITEBACK_DEV_AZURITE_PORT"}
    assert len(others) == 4  # the API, the FHIR server, the token endpoint, the OpenID provider
    assert not others & {azurite, azurite + 1, azurite + 2}


def test_a_port_held_by_a_connected_client_socket_is_not_bindable() -> None:
    """A connected client socket owns its local port although nothing listens on it: that port is taken."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
            held = client.getsockname()[1]
            assert not port_bindable(held)


def test_a_block_skips_a_bound_port(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    first = free_port_block(3)
    second = free_port_block(3)
    while abs(second - first) < 3:
        second = free_port_block(3)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", first + 1))
        starts = iter([first, second])
        monkeypatch.setattr(process.random.SystemRandom, "randrange", lambda self, a, b: next(starts))
        assert free_port_block(3) == second


def test_range_falls_back_above_the_ephemeral_range(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "ip_local_port_range"
    fake.write_text("1024\t50000\n")
    monkeypatch.setattr(process, "EPHEMERAL_RANGE_FILE", fake)
    assert listen_port_range() == range(50001, 65536)
