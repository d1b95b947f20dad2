"""Start several runtime instances on one state folder, as a function app scaled out to several instances.

Each instance is a process of its own (``python -m devhost`` with ``--shared-port``): it runs the trigger groups it
is given, listens on a private port and, with the HTTP group, on the shared port, and leases its work from the
shared state. The supervisor only starts and stops them. An instance that dies (``kill -9``) is not restarted: the
others go on serving, take over its leased work once the leases expire, and keep answering on the shared port.
Stopping the supervisor (SIGTERM, Ctrl-C) stops every instance; if the supervisor itself is killed, the instances
get SIGTERM from the kernel (``PR_SET_PDEATHSIG``).

What this does not emulate: the scale controller (the number of instances is fixed, per group too), placement of
instances on machines, and the partitions (control queues) of the Durable Functions Azure Storage provider.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devhost.groups import format_groups
from devhost.instances import listed_instances, unregister_instance

log = logging.getLogger("devhost.supervisor")


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the supervisor dies, so no instance outlives a killed supervisor."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``port``: bound without ``SO_REUSEPORT``, so instances of another run count too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Instance:
    index: int
    groups: frozenset[str]
    proc: subprocess.Popen[bytes]
    reported: bool = False

    @property
    def label(self) -> str:
        return f"instance {self.index} (pid {self.proc.pid}, {format_groups(self.groups)})"


class Supervisor:
    """Runs ``len(plan)`` instances; instance ``i`` runs the groups ``plan[i]``."""

    def __init__(
        self,
        *,
        app_dir: Path,
        state_dir: Path,
        shared_port: int,
        plan: Sequence[frozenset[str]],
        module: str = "function_app",
        log_level: str = "INFO",
    ) -> None:
        self.app_dir = app_dir
        self.state_dir = state_dir
        self.shared_port = shared_port
        self.plan = list(plan)
        self.module = module
        self.log_level = log_level
        self.instances: list[Instance] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.shared_port}"

    def _argv(self, index: int, groups: frozenset[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "devhost",
            "--app-dir",
            str(self.app_dir),
            "--module",
            self.module,
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
            "--port",
            "0",
            "--shared-port",
            str(self.shared_port),
            "--instance-index",
            str(index),
            "--groups",
            format_groups(groups),
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start every instance and wait until each has listed itself in instances.json; on failure stop them all."""
        if not port_free(self.shared_port):
            raise OSError(f"port {self.shared_port} is in use: another gateway may be running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for index, groups in enumerate(self.plan):
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self._argv(index, groups),
                stdin=subprocess.DEVNULL,
                preexec_fn=_terminate_with_parent,  # the hook only calls prctl
            )
            self.instances.append(Instance(index, groups, proc))
        deadline = time.monotonic() + timeout
        ready: set[int] = set()  # instances seen listed: one that dies after that is a kill, not a failed start
        try:
            while len(ready) < len(self.instances):
                ready |= {e["pid"] for e in listed_instances(self.state_dir)} & {i.proc.pid for i in self.instances}
                failed = [i for i in self.instances if i.proc.pid not in ready and i.proc.poll() is not None]
                if failed:
                    raise RuntimeError(f"{failed[0].label} exited with {failed[0].proc.returncode} while starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the instances were not ready within {timeout:.0f} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        log.info("%d instances on %s (state in %s)", len(self.instances), self.base_url, self.state_dir)

    def alive(self) -> list[Instance]:
        """The instances still running; reports (once) each one that has exited, and drops its entry."""
        with self._lock:
            running = []
            for instance in self.instances:
                code = instance.proc.poll()
                if code is None:
                    running.append(instance)
                elif not instance.reported:
                    instance.reported = True
                    how = f"signal {-code}" if code < 0 else f"code {code}"
                    log.warning("%s exited (%s); the other instances go on", instance.label, how)
                    unregister_instance(self.state_dir, instance.proc.pid)
            return running

    def wait(self, stop: threading.Event, poll: float = 0.2) -> bool:
        """Block until ``stop`` is set (True) or every instance has exited (False)."""
        while not stop.wait(poll):
            if not self.alive():
                log.error("every instance has exited")
                return False
        return True

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every instance, then SIGKILL those still running after ``grace`` seconds."""
        for instance in self.instances:
            if instance.proc.poll() is None:
                instance.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for instance in self.instances:
            try:
                instance.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", instance.label, grace)
                instance.proc.kill()
                instance.proc.wait()
            instance.reported = True
        if self.instances:
            unregister_instance(self.state_dir, self.instances[0].proc.pid)  # also drops every dead entry
