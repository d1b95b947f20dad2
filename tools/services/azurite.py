"""Launch Azurite (npm) for Table, Blob and Queue storage on loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools.services.process import REPO_ROOT, ManagedProcess, free_port, port_open

# Azurite's published development account: a well-known value, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int
    process: ManagedProcess

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{DEV_ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{DEV_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{DEV_ACCOUNT};"
        )

    @property
    def table_url(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{DEV_ACCOUNT}"

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{DEV_ACCOUNT}"

    def stop(self) -> None:
        self.process.stop()


def azurite_binary() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if not found:
        raise RuntimeError("azurite not found: run `npm ci` (make setup) first")
    return found


def start_azurite(
    *,
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    location: Path | None = None,
    log_dir: Path | None = None,
) -> Azurite:
    """Start Azurite in memory, or persisting under ``location`` when given."""
    ports = [blob_port or free_port(), queue_port or free_port(), table_port or free_port()]
    argv = [azurite_binary(), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"]
    argv += ["--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1"]
    argv += ["--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2])]
    if location is None:
        argv.append("--inMemoryPersistence")
    else:
        location.mkdir(parents=True, exist_ok=True)
        argv += ["--location", str(location)]
    process = ManagedProcess("azurite", argv, log_dir=log_dir)
    process.wait_ready(lambda: all(port_open(p) for p in ports), timeout=60)
    return Azurite(blob_port=ports[0], queue_port=ports[1], table_port=ports[2], process=process)


@contextmanager
def paused(azurite: Azurite) -> Iterator[None]:
    """Azurite stopped (SIGSTOP) for the block: the kernel still accepts connections, and nothing answers."""
    os.killpg(azurite.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(azurite.process.pid, signal.SIGCONT)
