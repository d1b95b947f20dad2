"""The local Service Bus emulator: duplicate detection, peek-lock, delivery counts, dead-lettering, TTL, FIFO,
sessions, persistence (also across a ``kill -9``) and exactly-once hand-out to concurrent receivers.

Time is driven by an injected clock, so nothing here sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devhost.servicebus import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    TTL_EXPIRED,
    LocalServiceBus,
    MessageLockLostError,
    MessageSizeExceededError,
)
from tools.services.process import REPO_ROOT

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "servicebus.db"


@pytest.fixture
def bus(db_path: Path, clock: Clock) -> Iterator[LocalServiceBus]:
    with LocalServiceBus(db_path, lock_duration=30, max_delivery_count=3, duplicate_window=600, clock=clock) as b:
        yield b


def test_a_sent_message_is_received_with_everything_it_was_sent_with(bus: LocalServiceBus) -> None:
    assert bus.send(
        "changes",
        body=b'{"changeId":"c1"}',
        message_id="c1",
        application_properties={"changeId": "c1", "attempt": 2, "urgent": True, "ratio": 0.5, "none": None},
        content_type="application/json",
        correlation_id="corr-1",
        subject="change",
        time_to_live=3600,
    )
    [msg] = bus.receive("changes")
    assert msg.body == b'{"changeId":"c1"}'
    assert msg.message_id == "c1"
    assert msg.application_properties == {"changeId": "c1", "attempt": 2, "urgent": True, "ratio": 0.5, "none": None}
    assert (msg.content_type, msg.correlation_id, msg.subject, msg.session_id) == (
        "application/json",
        "corr-1",
        "change",
        None,
    )
    assert msg.delivery_count == 1
    assert msg.enqueued_time == datetime.fromtimestamp(START, UTC)
    assert msg.locked_until == datetime.fromtimestamp(START + 30, UTC)
    assert msg.expires_at == datetime.fromtimestamp(START + 3600, UTC)
    assert msg.time_to_live == timedelta(hours=1)
    assert msg.scheduled_enqueue_time is None
    assert msg.lock_token
    assert msg.queue == "changes"


def test_a_message_without_id_gets_one(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"x")
    bus.send("q", body=b"x")
    ids = [m.message_id for m in bus.receive("q", max_messages=5)]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_duplicates_are_dropped_within_the_window_and_accepted_after_it(bus: LocalServiceBus, clock: Clock) -> None:
    assert bus.send("q", body=b"first", message_id="m1") is True
    clock.advance(599)
    assert bus.send("q", body=b"second", message_id="m1") is False  # "succeeds", but dropped
    [msg] = bus.receive("q", max_messages=10)
    assert msg.body == b"first"
    bus.complete(msg.lock_token)
    # de-duplication does not depend on the first copy still being in the queue
    assert bus.send("q", body=b"third", message_id="m1") is False
    clock.advance(2)  # 601 s after the first send
    assert bus.send("q", body=b"fourth", message_id="m1") is True
    assert [m.body for m in bus.receive("q", max_messages=10)] == [b"fourth"]


def test_duplicate_detection_is_per_queue_and_keys_on_message_id_only(bus: LocalServiceBus) -> None:
    assert bus.send("a", body=b"1", message_id="same")
    assert bus.send("b", body=b"1", message_id="same")
    assert not bus.send("a", body=b"different body", message_id="same", subject="other")


def test_messages_are_delivered_fifo_by_sequence_number(bus: LocalServiceBus) -> None:
    for i in range(10):
        bus.send("q", body=str(i).encode())
    first = bus.receive("q", max_messages=4)
    rest = bus.receive("q", max_messages=10)
    assert [m.body for m in first + rest] == [str(i).encode() for i in range(10)]
    seqs = [m.sequence_number for m in first + rest]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10


def test_a_locked_message_is_hidden_until_its_lock_expires_then_redelivered(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"x", message_id="m")
    [first] = bus.receive("q")
    assert bus.receive("q") == []
    assert bus.counts("q") == {"active": 0, "locked": 1, "deadLetter": 0, "scheduled": 0}
    clock.advance(29.9)
    assert bus.receive("q") == []
    clock.advance(0.1)
    [second] = bus.receive("q")
    assert second.message_id == "m"
    assert second.delivery_count == 2
    assert second.lock_token != first.lock_token
    with pytest.raises(MessageLockLostError):
        bus.complete(first.lock_token)
    bus.complete(second.lock_token)
    assert bus.counts("q") == {"active": 0, "locked": 0, "deadLetter": 0, "scheduled": 0}


def test_complete_removes_the_message_and_a_second_settlement_fails(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"x")
    [msg] = bus.receive("q")
    bus.complete(msg.lock_token)
    assert bus.receive("q") == []
    for settle in (bus.complete, bus.abandon, bus.renew_lock):
        with pytest.raises(MessageLockLostError):
            settle(msg.lock_token)
    with pytest.raises(MessageLockLostError):
        bus.complete("no-such-token")


def test_abandon_makes_the_message_available_at_once_with_its_delivery_count(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"a", message_id="a")
    bus.send("q", body=b"b", message_id="b")
    [a] = bus.receive("q")
    bus.abandon(a.lock_token)
    [again] = bus.receive("q")  # back at its place in the queue, ahead of "b"
    assert (again.message_id, again.delivery_count) == ("a", 2)


def test_abandoned_max_delivery_count_times_the_message_is_dead_lettered(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"poison", message_id="p", application_properties={"k": "v"})
    for expected in (1, 2, 3):
        [msg] = bus.receive("q")
        assert msg.delivery_count == expected
        bus.abandon(msg.lock_token)
    assert bus.receive("q") == []
    [dead] = bus.dead_letters("q")
    assert dead.message_id == "p"
    assert dead.body == b"poison"
    assert dead.application_properties == {"k": "v"}
    assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED == "MaxDeliveryCountExceeded"
    assert dead.description and "3" in dead.description
    assert dead.delivery_count == 3
    assert bus.counts("q") == {"active": 0, "locked": 0, "deadLetter": 1, "scheduled": 0}


def test_a_lock_lapsing_at_the_max_delivery_count_dead_letters_the_message(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"x", message_id="m")
    for expected in (1, 2, 3):
        [msg] = bus.receive("q")
        assert msg.delivery_count == expected
        clock.advance(31)  # the consumer died: the lock lapses
    assert bus.receive("q") == []
    [dead] = bus.dead_letters("q")
    assert (dead.message_id, dead.reason, dead.delivery_count) == ("m", MAX_DELIVERY_COUNT_EXCEEDED, 3)


def test_explicit_dead_letter_keeps_reason_and_description(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"x", message_id="m", subject="change")
    [msg] = bus.receive("q")
    bus.dead_letter(msg.lock_token, "ValidationFailed", "target rejected it")
    [dead] = bus.dead_letters("q")
    assert (dead.reason, dead.description, dead.delivery_count, dead.subject) == (
        "ValidationFailed",
        "target rejected it",
        1,
        "change",
    )
    with pytest.raises(MessageLockLostError):
        bus.complete(msg.lock_token)


def test_an_expired_message_is_dead_lettered_not_delivered(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"short-lived", message_id="ttl", time_to_live=10)
    bus.send("q", body=b"long-lived", message_id="keep", time_to_live=100)
    clock.advance(10)
    [msg] = bus.receive("q", max_messages=10)
    assert msg.message_id == "keep"
    [dead] = bus.dead_letters("q")
    assert (dead.message_id, dead.reason, dead.delivery_count) == ("ttl", TTL_EXPIRED, 0)


def test_a_locked_message_does_not_expire_under_its_consumer(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"x", time_to_live=10)
    [msg] = bus.receive("q")
    clock.advance(15)
    bus.complete(msg.lock_token)
    assert bus.dead_letters("q") == []


def test_renew_lock_extends_the_lock_from_now(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"x")
    [msg] = bus.receive("q")
    clock.advance(20)
    assert bus.renew_lock(msg.lock_token) == datetime.fromtimestamp(START + 50, UTC)
    clock.advance(20)  # past the original lock, inside the renewed one
    assert bus.receive("q") == []
    bus.complete(msg.lock_token)
    bus.send("q", body=b"y")
    [other] = bus.receive("q")
    clock.advance(30)
    with pytest.raises(MessageLockLostError):
        bus.renew_lock(other.lock_token)


def test_a_scheduled_message_appears_at_its_time(bus: LocalServiceBus, clock: Clock) -> None:
    at = datetime.fromtimestamp(START + 60, UTC)
    bus.send("q", body=b"later", scheduled_enqueue_time=at, time_to_live=30)
    assert bus.receive("q") == []
    assert bus.counts("q") == {"active": 0, "locked": 0, "deadLetter": 0, "scheduled": 1}
    clock.advance(60)
    [msg] = bus.receive("q")
    assert msg.scheduled_enqueue_time == at
    assert msg.enqueued_time == at
    assert msg.expires_at == at + timedelta(seconds=30)  # TTL counts from when it became visible


def test_sessions_are_fifo_per_session_and_locked_to_one_receiver(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"a1", session_id="A")
    bus.send("q", body=b"b1", session_id="B")
    bus.send("q", body=b"a2", session_id="A")
    bus.send("q", body=b"p1")
    bus.send("q", body=b"a3", session_id="A")

    [a1] = bus.receive("q")
    assert (a1.body, a1.session_id) == (b"a1", "A")
    [b1] = bus.receive("q", max_messages=10)  # A is locked; a batch never mixes sessions
    assert b1.body == b"b1"
    assert [m.body for m in bus.receive("q", max_messages=10)] == [b"p1"]
    assert bus.receive("q") == []  # a2 waits until a1 is settled
    assert bus.receive("q", session_id="A") == []

    bus.abandon(a1.lock_token)
    [again] = bus.receive("q", session_id="A")
    assert (again.body, again.delivery_count) == (b"a1", 2)  # order kept after an abandon
    bus.complete(again.lock_token)
    assert [m.body for m in bus.receive("q", session_id="A", max_messages=10)] == [b"a2", b"a3"]
    assert bus.receive("q", session_id="B") == []  # B still locked by its receiver
    bus.complete(b1.lock_token)
    assert bus.receive("q", session_id="B") == []  # and now empty


def test_a_session_lock_lapses_with_its_message_lock(bus: LocalServiceBus, clock: Clock) -> None:
    bus.send("q", body=b"a1", session_id="A")
    bus.send("q", body=b"a2", session_id="A")
    bus.receive("q")
    assert bus.receive("q") == []
    clock.advance(31)
    [msg] = bus.receive("q")
    assert (msg.body, msg.delivery_count) == (b"a1", 2)


def test_state_survives_closing_and_reopening(db_path: Path, clock: Clock) -> None:
    with LocalServiceBus(db_path, lock_duration=30, clock=clock) as bus:
        bus.send("q", body=b"one", message_id="1", application_properties={"k": 1})
        bus.send("q", body=b"two", message_id="2")
        bus.send("q", body=b"three", message_id="3")
        [locked] = bus.receive("q")
        two, three = bus.receive("q", max_messages=10)
        bus.abandon(two.lock_token)
        bus.dead_letter(three.lock_token, "Bad", "bad")
    with LocalServiceBus(db_path, lock_duration=30, clock=clock) as bus:
        assert bus.counts("q") == {"active": 1, "locked": 1, "deadLetter": 1, "scheduled": 0}
        assert not bus.send("q", body=b"one again", message_id="1")  # duplicate history kept
        bus.complete(locked.lock_token)  # the lock is still held across the restart
        [two] = bus.receive("q")
        assert (two.message_id, two.body, two.delivery_count) == ("2", b"two", 2)
        assert bus.queues() == ["q"]


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from devhost.servicebus import LocalServiceBus
bus = LocalServiceBus(Path(sys.argv[1]), lock_duration=300)
for i in range(50):
    bus.send("q", body=str(i).encode(), message_id=f"m{i}")
[msg] = bus.receive("q")
bus.complete(msg.lock_token)
bus.receive("q")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_committed_operations_survive_a_kill_9(db_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(db_path)], cwd=REPO_ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == -9, proc.stderr.decode()
    with LocalServiceBus(db_path, lock_duration=300) as bus:
        assert bus.counts("q") == {"active": 48, "locked": 1, "deadLetter": 0, "scheduled": 0}
        assert not bus.send("q", body=b"dup", message_id="m0")
        assert [m.message_id for m in bus.receive("q")] == ["m2"]


def test_concurrent_senders_and_receivers_hand_out_each_message_exactly_once(bus: LocalServiceBus) -> None:
    per_sender = 500
    received: Counter[str] = Counter()
    lock = threading.Lock()
    senders_done = threading.Event()
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        for i in range(per_sender):
            bus.send("q", body=b"x", message_id=f"{worker}-{i}")

    def receive() -> None:
        try:
            while True:
                batch = bus.receive("q", max_messages=3)
                if not batch:
                    if senders_done.is_set() and bus.counts("q")["active"] == 0:
                        return
                    continue
                for msg in batch:
                    bus.complete(msg.lock_token)
                with lock:
                    received.update(m.message_id for m in batch)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    receivers = [threading.Thread(target=receive) for _ in range(4)]
    for t in senders + receivers:
        t.start()
    for t in senders:
        t.join()
    senders_done.set()
    for t in receivers:
        t.join(timeout=30)
    assert not errors
    assert len(received) == 4 * per_sender
    assert set(received.values()) == {1}
    assert bus.counts("q") == {"active": 0, "locked": 0, "deadLetter": 0, "scheduled": 0}


def test_size_limit_and_invalid_input_are_refused(db_path: Path, clock: Clock) -> None:
    with LocalServiceBus(db_path, max_message_size=1024, clock=clock) as bus:
        bus.send("q", body=b"x" * 1000)
        with pytest.raises(MessageSizeExceededError):
            bus.send("q", body=b"x" * 1025)
        with pytest.raises(TypeError):
            bus.send("q", body=b"x", application_properties={"nested": {"a": 1}})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="timezone"):
            bus.send("q", body=b"x", scheduled_enqueue_time=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="message_id"):
            bus.send("q", body=b"x", message_id="m" * 129)
        with pytest.raises(ValueError, match="queue"):
            bus.send("", body=b"x")
        with pytest.raises(ValueError, match="max_messages"):
            bus.receive("q", max_messages=0)


def test_purge_empties_the_queue_and_its_duplicate_history(bus: LocalServiceBus) -> None:
    bus.send("q", body=b"a", message_id="a")
    bus.send("q", body=b"b", message_id="b")
    [msg] = bus.receive("q")
    bus.dead_letter(msg.lock_token, "x", "y")
    bus.send("other", body=b"c")
    assert bus.purge("q") == 2
    assert bus.counts("q") == {"active": 0, "locked": 0, "deadLetter": 0, "scheduled": 0}
    assert bus.send("q", body=b"a", message_id="a")
    assert bus.counts("other")["active"] == 1
