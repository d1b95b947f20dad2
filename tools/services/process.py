"""Run a local service as a child process: own process group, readiness probe, clean stop, log file."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the parent dies, so no service outlives a killed run."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_PORT_FLOOR = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def listen_port_range() -> range:
    """Ports a local service may listen on: outside the kernel's ephemeral range, which outbound connections draw
    from. A port the OS handed out with ``bind(0)`` can be taken by any client socket between the probe and the
    service's own ``listen``; one below the ephemeral range can only be taken by another listener."""
    low, high = _ephemeral_range()
    if low - _LISTEN_PORT_FLOOR >= 1000:
        return range(_LISTEN_PORT_FLOOR, low)
    if 65535 - high >= 1000:
        return range(high + 1, 65536)
    return range(1024, 65536)


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now. No ``SO_REUSEADDR``, so a socket in TIME_WAIT counts as taken too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, attempts: int = 200) -> int:
    """The first of ``count`` consecutive ports that can all be bound now, outside the ephemeral range."""
    candidates = listen_port_range()
    rng = random.SystemRandom()
    for _ in range(attempts):
        first = rng.randrange(candidates.start, candidates.stop - count + 1)
        if all(port_bindable(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found in {candidates.start}-{candidates.stop - 1}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that can be bound now, outside the ephemeral range."""
    return free_port_block(1)


def dev_ports() -> dict[str, int]:
    """Distinct free ports for a whole local stack (API, FHIR, token endpoint, OpenID provider, Azurite's three), as
    environment settings. Chosen together so that a port picked for one service is never inside Azurite's block."""
    azurite = free_port_block(3)
    taken = {azurite, azurite + 1, azurite + 2}
    ports: dict[str, int] = {"WRITEBACK_DEV_AZURITE_PORT": azurite}
    names = ("WRITEBACK_DEV_PORT", "WRITEBACK_DEV_FHIR_PORT", "WRITEBACK_DEV_TOKEN_PORT", "WRITEBACK_DEV_OPENID_PORT")
    for name in names:
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        ports[name] = port
    return ports


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class ManagedProcess:
    """A child process in its own process group, stopped with everything it spawned."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        log_dir = log_dir or REPO_ROOT / ".local" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # the hook only calls prctl
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}"
                )
            try:
                if probe():
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: GET ``url`` answers 2xx."""

    def probe() -> bool:
        return httpx.get(url, timeout=1.0).is_success

    return probe


def start_when_ready(
    name: str,
    argv: Sequence[str],
    ready_url: str,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` as ``name`` and wait until GET ``ready_url`` answers 2xx; a process that does not get there
    (or a wait cut short, Ctrl-C included) is stopped again."""
    process = ManagedProcess(name, argv, env=env, log_dir=log_dir)
    try:
        process.wait_ready(http_ok(ready_url), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process
