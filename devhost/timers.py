"""Timer triggers without the host: NCRONTAB schedules and a pump that runs the app's ``timerTrigger`` functions.

Schedules follow the WebJobs timer extension (``TimerSchedule.Create``): the expression is first parsed as a
six-field NCRONTAB expression ``{second} {minute} {hour} {day} {month} {day-of-week}`` (NCrontab with
``IncludingSeconds``), else as a .NET TimeSpan (``00:05:00``), which means "every interval". All times are UTC
(the host uses local time, which is UTC on Azure unless ``WEBSITE_TIME_ZONE`` is set).

Day of month and day of week: NCrontab, which the host uses, ANDs them. ``CrontabSchedule.GetNextOccurrence``
first finds the next date whose day and month match, then returns it only if its day of week matches too, and
otherwise searches again from the end of that day. So ``0 0 0 13 * 5`` is "Friday the 13th", not the Vixie-cron
"the 13th or any Friday". Day of week is 0-6 with Sunday 0 (7 is refused, as in NCrontab). Names match
case-insensitively as a prefix of at least three letters of the English name (``Jan``, ``January``, ``Mon``).

The pump mirrors the host's ``TimerListener`` and ``ScheduleMonitor``: with ``useMonitor`` (default on, but off
for schedules firing more than once a minute, as the host decides) the last and next occurrences are kept in a
SQLite file; on start, if the recorded next occurrence has passed, the function runs once at once with
``past_due=True``. ``runOnStartup`` runs it once at start. An exception is logged and the schedule goes on (no
retry). Each timer runs on its own thread, so an occurrence never overlaps the previous one: occurrences missed
while a run was still going collapse into one run right after it.

Several runtime instances on one state folder fire each timer once, as the host does when an app scales out: a timer
runs only on the instance holding its lease (``devhost.timer_leases``), which renews it; the others try to take it
every third of the lease, and take it over when a holder dies. Taking a lease starts the timer there as the host
starts a listener: its schedule status is read again (a miss is past due) and ``runOnStartup`` runs.
"""

from __future__ import annotations

import bisect
import calendar
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.functions.timer import TimerRequest

from devhost.app_index import TIMER, AppIndex, FunctionInfo
from devhost.invoke import invoke
from devhost.leases import DEFAULT_LEASE_SECONDS, LeaseRenewer, new_owner_id
from devhost.servicebus_trigger import parse_timespan, resolve_setting
from devhost.timer_leases import TimerLeases

logger = logging.getLogger("devhost.timers")

# NCrontab searches forward at most this far; a schedule with no occurrence (Feb 30) is refused at parse time.
_SEARCH_LIMIT = timedelta(days=366 * 30)
_NEVER = "0001-01-01T00:00:00"  # how the host serialises ``DateTime.MinValue`` for a timer that never ran

_MONTHS = [calendar.month_name[m] for m in range(1, 13)]
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


class ScheduleError(ValueError):
    """The schedule expression is neither a valid NCRONTAB expression nor a TimeSpan."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day-of-week", 0, 6, tuple(_DAYS)),
)


class Schedule(ABC):
    """When a timer fires."""

    expression: str

    @abstractmethod
    def next_after(self, dt: datetime) -> datetime:
        """The first occurrence strictly after ``dt`` (timezone-aware), in UTC."""

    def occurrences(self, dt: datetime, count: int) -> list[datetime]:
        out: list[datetime] = []
        for _ in range(count):
            dt = self.next_after(dt)
            out.append(dt)
        return out

    def fires_more_than_once_a_minute(self, now: datetime) -> bool:
        """The host's test for turning the schedule monitor off: two occurrences within the next minute."""
        return self.occurrences(now, 2)[1] - now < timedelta(minutes=1)


@dataclass(frozen=True)
class CronSchedule(Schedule):
    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: frozenset[int]

    def next_after(self, dt: datetime) -> datetime:
        t = _as_utc(dt).replace(microsecond=0) + timedelta(seconds=1)
        limit = t + _SEARCH_LIMIT
        while t < limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
                continue
            # NCrontab ANDs day of month and day of week (see the module docstring).
            if t.day not in self.days or (t.isoweekday() % 7) not in self.days_of_week:
                t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
                continue
            hour = _next_in(self.hours, t.hour)
            if hour is None:
                t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
                continue
            if hour != t.hour:
                t = t.replace(hour=hour, minute=0, second=0)
            minute = _next_in(self.minutes, t.minute)
            if minute is None:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != t.minute:
                t = t.replace(minute=minute, second=0)
            second = _next_in(self.seconds, t.second)
            if second is None:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            return t.replace(second=second)
        raise ScheduleError(f"{self.expression!r} has no occurrence within {_SEARCH_LIMIT.days} days of {dt}")

    def __str__(self) -> str:
        return f"Cron: '{self.expression}'"


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """A TimeSpan schedule: every ``interval``, counted from the previous occurrence (or from start)."""

    expression: str
    interval: timedelta

    def next_after(self, dt: datetime) -> datetime:
        return _as_utc(dt) + self.interval

    def fires_more_than_once_a_minute(self, now: datetime) -> bool:
        return self.interval < timedelta(minutes=1)  # the host's test for TimeSpan schedules

    def __str__(self) -> str:
        return f"Constant: {self.interval}"


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError("schedules need a timezone-aware datetime")
    return dt.astimezone(UTC)


def _first_of_next_month(t: datetime) -> datetime:
    return datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)


def _next_in(values: tuple[int, ...], current: int) -> int | None:
    i = bisect.bisect_left(values, current)
    return values[i] if i < len(values) else None


def parse_ncrontab(expression: str) -> Schedule:
    """Parse a timer trigger schedule: six-field NCRONTAB, else a TimeSpan interval. Raises ``ScheduleError``."""
    if not isinstance(expression, str) or not expression.strip():
        raise ScheduleError("the schedule expression is empty")
    text = expression.strip()
    tokens = text.split()
    if len(tokens) == len(_FIELDS):
        return _parse_cron(text, tokens)
    if (len(tokens) == 1 and ":" in text) or _is_number(text):
        return _parse_timespan(text)
    raise ScheduleError(
        f"{expression!r} is neither an NCRONTAB expression (6 fields: second minute hour day month day-of-week, "
        f"got {len(tokens)}) nor a TimeSpan such as 00:05:00"
    )


def _parse_cron(text: str, tokens: list[str]) -> CronSchedule:
    sets = [_parse_field(token, spec, text) for token, spec in zip(tokens, _FIELDS, strict=True)]
    seconds, minutes, hours, days, months, dows = sets
    if not any(day <= _max_days(month) for month in months for day in days):
        raise ScheduleError(f"{text!r} never occurs: no month in it has any of its days")
    return CronSchedule(
        expression=text,
        seconds=tuple(sorted(seconds)),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=tuple(sorted(days)),
        months=tuple(sorted(months)),
        days_of_week=frozenset(dows),
    )


def _max_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _parse_field(token: str, spec: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for part in token.split(","):
        try:
            values.update(_parse_part(part, spec))
        except ScheduleError as exc:
            raise ScheduleError(f"{text!r}: {spec.name} field {token!r}: {exc}") from None
    return values


def _parse_part(part: str, spec: _Field) -> Iterable[int]:
    if not part:
        raise ScheduleError("empty list element")
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not _is_number(step_text) or int(step_text) == 0:
            raise ScheduleError(f"step {step_text!r} must be a positive integer")
        step = int(step_text)
    if base == "*":
        first, last = spec.low, spec.high
    elif "-" in base:
        low_text, _, high_text = base.partition("-")
        first, last = _value(low_text, spec), _value(high_text, spec)
        if first > last:
            raise ScheduleError(f"range {base!r} runs backwards")
    else:
        first = _value(base, spec)
        last = spec.high if slash else first  # NCrontab: "5/10" means 5, 15, 25, ... up to the maximum
    return range(first, last + 1, step)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _value(text: str, spec: _Field) -> int:
    if _is_number(text):
        value = int(text)
        if not spec.low <= value <= spec.high:
            raise ScheduleError(f"{value} is out of range {spec.low}-{spec.high}")
        return value
    if spec.names and len(text) >= 3:
        for offset, name in enumerate(spec.names):
            if name.lower().startswith(text.lower()):
                return spec.low + offset
    allowed = f"a number {spec.low}-{spec.high}"
    if spec.names:
        allowed += " or a name such as " + ", ".join(n[:3] for n in spec.names)
    raise ScheduleError(f"{text!r} is not {allowed}")


def _parse_timespan(text: str) -> IntervalSchedule:
    try:
        interval = parse_timespan(text)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    if interval <= timedelta(0):
        raise ScheduleError(f"{text!r}: the interval must be longer than zero")
    return IntervalSchedule(expression=text, interval=interval)


# --- the pump ------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScheduleStatus:
    """What the host's schedule monitor records per timer."""

    last: datetime | None
    next: datetime
    last_updated: datetime | None

    def as_dict(self) -> dict[str, str]:
        return {
            "Last": self.last.isoformat() if self.last else _NEVER,
            "Next": self.next.isoformat(),
            "LastUpdated": self.last_updated.isoformat() if self.last_updated else _NEVER,
        }


class _StatusStore:
    """The schedule monitor's storage: one row per timer in a SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS timer_status ("
            " name TEXT PRIMARY KEY, last TEXT, next TEXT NOT NULL, last_updated TEXT)"
        )

    def get(self, name: str) -> ScheduleStatus | None:
        with self._lock:
            row = self._db.execute(
                "SELECT last, next, last_updated FROM timer_status WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        last, next_, updated = (datetime.fromisoformat(v) if v else None for v in row)
        assert next_ is not None
        return ScheduleStatus(last=last, next=next_, last_updated=updated)

    def put(self, name: str, status: ScheduleStatus) -> None:
        values = [v.isoformat() if v else None for v in (status.last, status.next, status.last_updated)]
        with self._lock:
            self._db.execute(
                "INSERT INTO timer_status (name, last, next, last_updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last = excluded.last, next = excluded.next,"
                " last_updated = excluded.last_updated",
                (name, *values),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Timer:
    fn: FunctionInfo
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool
    status: ScheduleStatus
    startup: str | None = None  # "past_due" or "run_on_startup": an immediate run is pending
    running: threading.Lock | None = None
    held: bool = False  # this instance holds the timer's lease, so runs it


class TimerPump:
    """Runs every ``timerTrigger`` function of the app on its schedule.

    ``start()`` starts one thread per timer; ``start(background=False)`` only prepares the timers, and the caller
    drives them with ``run_due()`` (deterministic tests with an injected ``clock``).
    """

    def __init__(
        self,
        index: AppIndex,
        *,
        state_db: Path,
        clock: Callable[[], datetime] = _utcnow,
        max_wait: float = 1.0,
        environ: Mapping[str, str] | None = None,
        durable_client_json: Callable[[], str] | None = None,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._durable_client_json = durable_client_json
        self._functions = index.by_trigger(TIMER)
        self._state_db = Path(state_db)
        self._clock = clock
        self._max_wait = max_wait
        self._environ = environ
        self._owner = owner or new_owner_id()
        self._lease_seconds = lease_seconds
        self._timers: list[_Timer] = []
        self._store: _StatusStore | None = None
        self._leases: TimerLeases | None = None
        self._renewer = LeaseRenewer("timer", lease_seconds, self._renew_leases)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def timers(self) -> dict[str, ScheduleStatus]:
        """Function name -> its current schedule status (after ``start``)."""
        return {t.fn.name: t.status for t in self._timers}

    def start(self, *, background: bool = True) -> None:
        if self._timers:
            raise RuntimeError("the timer pump is already started")
        timers = [self._timer(fn) for fn in self._functions]
        if not timers:
            return
        if any(t.use_monitor for t in timers):
            self._store = _StatusStore(self._state_db)
        self._leases = TimerLeases(self._state_db, self._owner, self._lease_seconds)
        self._timers = timers
        self._stop.clear()
        for timer in timers:
            self._take(timer)
        if background:
            for timer in timers:
                thread = threading.Thread(
                    target=self._loop, args=(timer,), name=f"devhost-timer-{timer.fn.name}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._renewer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; waits up to ``timeout`` seconds for a running timer function to return."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("timer thread %s still running after stop", thread.name)
        self._threads = []
        self._renewer.stop()
        if self._leases is not None:
            self._leases.release(t.fn.name for t in self._timers if t.held)
            self._leases.close()
            self._leases = None
        self._timers = []
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> TimerPump:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run_due(self) -> list[str]:
        """Run, in this thread, every timer that is due now (or has a startup run pending); returns their names."""
        now = self._now()
        return [t.fn.name for t in self._timers if self._take(t) and self._run_if_due(t, now)]

    # --- internals ---------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return _as_utc(self._clock())

    def _timer(self, fn: FunctionInfo) -> _Timer:
        raw = fn.trigger.get("schedule")
        if not raw:
            raise ScheduleError(f"{fn.name}: timerTrigger has no schedule")
        expression = resolve_setting(str(raw), self._environ, what=f"{fn.name} schedule")
        try:
            schedule = parse_ncrontab(expression)
        except ScheduleError as exc:
            raise ScheduleError(f"{fn.name}: {exc}") from None
        use_monitor = bool(fn.trigger.get("useMonitor", True))
        # As the host: a schedule firing more than once a minute is not monitored, whatever useMonitor says.
        if use_monitor and schedule.fires_more_than_once_a_minute(self._now()):
            use_monitor = False
        return _Timer(
            fn=fn,
            schedule=schedule,
            run_on_startup=bool(fn.trigger.get("runOnStartup", False)),
            use_monitor=use_monitor,
            status=ScheduleStatus(last=None, next=schedule.next_after(self._now()), last_updated=None),
            running=threading.Lock(),
        )

    def _prepare(self, timer: _Timer, now: datetime) -> None:
        """The host's ``CheckPastDueAsync``: reconcile the recorded status with the schedule, detect a miss."""
        past_due = False
        if timer.use_monitor:
            assert self._store is not None
            recorded = self._store.get(timer.fn.name)
            if recorded is None:
                recorded = ScheduleStatus(last=None, next=timer.schedule.next_after(now), last_updated=now)
                self._store.put(timer.fn.name, recorded)
            else:
                basis = recorded.last or recorded.last_updated or now
                expected = timer.schedule.next_after(basis)
                if recorded.next != expected:
                    # The schedule changed since the status was written: recompute instead of reporting a miss.
                    last_updated = basis
                    if now > expected:
                        expected, last_updated = timer.schedule.next_after(now), now
                    recorded = ScheduleStatus(last=None, next=expected, last_updated=last_updated)
                    self._store.put(timer.fn.name, recorded)
            timer.status = recorded
            past_due = now > recorded.next
        if past_due:
            timer.startup = "past_due"
            logger.info("timer %s is past due (next occurrence was %s)", timer.fn.name, timer.status.next.isoformat())
        elif timer.run_on_startup:
            timer.startup = "run_on_startup"

    def _take(self, timer: _Timer) -> bool:
        """Whether this instance runs ``timer`` now: it holds the timer's lease, or has just taken it (and then
        starts the timer, as the host starts a listener when it gets the listener's lock)."""
        if timer.held:
            return True
        assert self._leases is not None
        if not self._leases.acquire(timer.fn.name, self._now().timestamp()):
            return False
        timer.held = True
        now = self._now()
        if not timer.use_monitor:  # nothing recorded: the schedule starts over from now
            timer.status = ScheduleStatus(last=None, next=timer.schedule.next_after(now), last_updated=None)
        self._prepare(timer, now)
        logger.info("timer %s runs on this instance (it holds the timer's lease)", timer.fn.name)
        return True

    def _renew_leases(self) -> None:
        if self._leases is None:
            return
        held = [t for t in self._timers if t.held]
        kept = self._leases.renew((t.fn.name for t in held), self._now().timestamp())
        for timer in held:
            if timer.fn.name not in kept:
                timer.held = False
                logger.warning("timer %s: its lease lapsed and another instance took it", timer.fn.name)

    def _loop(self, timer: _Timer) -> None:
        while not self._stop.is_set():
            if not self._take(timer):
                self._stop.wait(self._renewer.interval)
                continue
            now = self._now()
            if timer.startup is not None or now >= timer.status.next:
                self._run_if_due(timer, now)
                continue
            wait = (timer.status.next - now).total_seconds()
            self._stop.wait(min(wait, self._max_wait))

    def _run_if_due(self, timer: _Timer, now: datetime) -> bool:
        assert timer.running is not None
        if not timer.running.acquire(blocking=False):
            return False  # the previous occurrence is still running
        try:
            if self._stop.is_set():
                return False
            startup, timer.startup = timer.startup, None
            if startup is None and now < timer.status.next:
                return False
            self._invoke(timer, now, past_due=startup == "past_due", unscheduled=startup is not None)
            return True
        finally:
            timer.running.release()

    def _invoke(self, timer: _Timer, now: datetime, *, past_due: bool, unscheduled: bool) -> None:
        request = TimerRequest(
            past_due=past_due,
            schedule_status=timer.status.as_dict() if timer.use_monitor else None,
            schedule={"AdjustForDST": False},
        )
        try:
            client = (
                self._durable_client_json() if timer.fn.durable_client_param and self._durable_client_json else None
            )
            invoke(timer.fn, request, durable_client_json=client)
        except Exception as exc:
            logger.error("timer function %s failed (%s); the schedule goes on", timer.fn.name, type(exc).__name__)
            logger.debug("timer function %s traceback", timer.fn.name, exc_info=True)
        # As the host: a run that fired a little early counts as the occurrence it was scheduled for, so that
        # "Next" cannot come out equal to the occurrence just run.
        basis = now
        if not unscheduled and timer.status.next > now:
            basis = timer.status.next
        timer.status = ScheduleStatus(last=basis, next=timer.schedule.next_after(basis), last_updated=basis)
        if timer.use_monitor and self._store is not None:
            self._store.put(timer.fn.name, timer.status)
