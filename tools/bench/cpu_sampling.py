"""CPU and memory: process groups' CPU and a process's resident memory from Linux ``/proc``, and the stack sampler
that splits this process's CPU by kind of work (validation, policy and diff, the fakes, serialisation, the rest)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- processes: CPU and memory from /proc ---------------------------------------------------------------------------


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in a process group (Linux ``/proc``); None elsewhere."""
    total, seen = 0, False
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after ")": state ppid pgrp ... utime(11) stime(12) cutime(13) cstime(14)
            total += sum(int(f) for f in fields[11:15])
            seen = True
    return total / CLOCK_TICKS if seen else None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextmanager
def cpu_of(groups: dict[str, int], into: dict[str, Any]) -> Iterator[None]:
    """CPU seconds each process group (and this process) spent inside the block."""
    before = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    own = time.process_time()
    yield
    for name, pgid in groups.items():
        after = group_cpu_seconds(pgid)
        start = before[name]
        into[name] = None if after is None or start is None else after - start
    into["benchmark client"] = time.process_time() - own


# --- this process: a sampled split by kind of work ------------------------------------------------------------------


SPLIT_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("validation", ("shared/core/fhir_validation/", "/fhir/resources/")),
    (
        "policy and diff",
        ("shared/core/planning.py", "shared/core/policy/", "/jsonpatch", "/jsonpointer", "/fhirpathpy/"),
    ),
    ("the fakes (not the project's)", ("shared/fakes/",)),
    ("serialisation", ("/json/", "/pydantic/", "/pydantic_core/", "shared/adapters/table_codec.py")),
]


class StackSampler:
    """Samples one thread's stack every ~0.5 ms; each sample goes to the first rule matching any frame of it."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            frame = sys._current_frames().get(self.thread_id)
            files = []
            while frame is not None:
                files.append(frame.f_code.co_filename.replace(os.sep, "/"))
                frame = frame.f_back
            self.counts[self._bucket(files)] += 1

    @staticmethod
    def _bucket(files: list[str]) -> str:
        for name, needles in SPLIT_RULES:
            if any(needle in f for f in files for needle in needles):
                return name
        return "the rest (intake, journal, pipeline, writeback, models)"

    def __enter__(self) -> StackSampler:
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._interval)
