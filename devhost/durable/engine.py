"""A local Durable Functions engine that drives the real ``azure-functions-durable`` SDK through its replay protocol.

How an orchestration moves:
- Everything that happens to an instance (start, activity result, timer, external event, sub-orchestration result)
  lands as a row in the ``inbox``; a timer is a row that becomes visible at its fire time.
- An *episode* takes the instance's visible inbox rows, appends them to its history after a new
  OrchestratorStarted, calls the orchestrator with the whole history (``devhost.durable.replay``), checks that the
  actions it returns agree with the ones recorded before (non-determinism fails the instance), schedules the new
  ones, and commits all of it in one SQLite transaction.
- Activities are ``work`` rows run by worker threads, at least once: a row is deleted only in the transaction that
  records its result, so one cut off by a crash runs again.

Several runtime processes can share one database, as the instances of a function app share a task hub. An episode
runs inside one ``BEGIN IMMEDIATE`` transaction, so whichever process takes an instance's inbox rows first runs the
episode and the others find nothing left to do. An activity is leased (``devhost.leases``): the row carries its
holder's owner id and an expiry that the holder renews while the activity runs; a process that starts leaves the
other processes' leases alone, and when a holder dies its leases expire and any process takes the work over. A
process notices work another process enqueued by polling the database (``devhost.change_watch``).

Task ids follow the SDK's numbering: every scheduled action except external-event waits takes the next number, in
the order the actions appear; a with-retry task also takes a number for each retry timer (when its failure is
replayed) and for each new attempt (when that timer fires). Those hidden numbers are why a batch holds at most one
retry event, and only as its first event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from devhost.app_index import ACTIVITY, ORCHESTRATION, AppIndex, FunctionInfo
from devhost.change_watch import DEFAULT_POLL_SECONDS, CommitWatcher
from devhost.durable.history import (
    ACTIVITY_ACTIONS,
    RETRY_ACTIONS,
    SUB_ORCHESTRATION_ACTIONS,
    Action,
    ActionType,
    EventType,
    dumps,
    event,
    timestamp,
)
from devhost.durable.replay import EpisodeResult, episode_context, replay_episode
from devhost.durable.store import DurableStore
from devhost.invoke import invoke
from devhost.leases import DEFAULT_LEASE_SECONDS, LeaseRenewer, new_owner_id

log = logging.getLogger("devhost.durable")

RUNNING_STATES = frozenset({"Pending", "Running", "ContinuedAsNew", "Suspended"})
TERMINAL_STATES = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class InstanceExistsError(Exception):
    """Starting an id whose instance is still pending or running (host.json: NonRunningStates)."""


class UnknownFunctionError(Exception):
    pass


class InstanceNotFoundError(Exception):
    pass


class InstanceGoneError(Exception):
    """The instance has finished: events can no longer be raised to it."""


def _now_dt(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


def _retry_delay(options: dict[str, Any], attempt: int) -> float:
    first = float(options.get("firstRetryIntervalInMilliseconds", 1000)) / 1000.0
    coefficient = float(options.get("backoffCoefficient", 1.0) or 1.0)
    delay = first * coefficient ** max(0, attempt - 1)
    cap = options.get("maxRetryIntervalInMilliseconds")
    if cap:
        delay = min(delay, float(cap) / 1000.0)
    return delay


class DurableEngine:
    def __init__(
        self,
        index: AppIndex,
        db_path: Any,
        *,
        task_hub: str = "LocalTaskHub",
        activity_workers: int = 8,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self.index = index
        self.task_hub = task_hub
        self.store = DurableStore(db_path)
        self.clock = clock
        self.owner = owner or new_owner_id()
        self.lease_seconds = lease_seconds
        self._renewer = LeaseRenewer("activity", lease_seconds, self._renew_leases)
        self._watcher = CommitWatcher("durable", self.store.read, self._notify, interval=poll_interval)
        self.orchestrators: dict[str, FunctionInfo] = index.durable(ORCHESTRATION)
        self.activities: dict[str, FunctionInfo] = index.durable(ACTIVITY)
        self._activity_workers = activity_workers
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.episodes = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run orchestrations and activities on threads of this process until ``stop``. Without it, the engine
        still serves client operations (an instance of the runtime that does not run the durable group)."""
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._orchestration_loop, name="durable-orchestrations", daemon=True)]
        self._threads += [
            threading.Thread(target=self._activity_loop, name=f"durable-activity-{i}", daemon=True)
            for i in range(self._activity_workers)
        ]
        for t in self._threads:
            t.start()
        self._renewer.start()
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._notify()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        self._watcher.stop()
        self._renewer.stop()
        # Give back what is still held (an activity that outlived the wait): another instance runs it again now,
        # rather than after the lease expires.
        with self.store.tx() as db:
            db.execute("UPDATE work SET leased_until = 0, leased_by = NULL WHERE leased_by = ?", (self.owner,))

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # --- client operations ---------------------------------------------------------------------------------

    def start_instance(self, name: str, instance_id: str | None, input_json: str | None) -> str:
        fn = self.orchestrators.get(name)
        if fn is None:
            raise UnknownFunctionError(f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator.")
        instance_id = instance_id or uuid.uuid4().hex
        with self.store.tx() as db:
            row = db.execute("SELECT status FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is not None and row["status"] in RUNNING_STATES:
                raise InstanceExistsError(f"An Orchestration instance with the status {row['status']} already exists.")
            self._create_instance(db, instance_id, name, input_json, parent=None)
        self._notify()
        return instance_id

    def _create_instance(
        self, db: Any, instance_id: str, name: str, input_json: str | None, parent: tuple[str, str, int] | None
    ) -> None:
        now = _now_dt(self.clock)
        self._forget(db, instance_id, keep_instance=False)
        execution_id = uuid.uuid4().hex
        db.execute(
            "INSERT INTO instances (instance_id, name, execution_id, status, input, created_at, updated_at,"
            " parent_instance_id, parent_execution_id, parent_task_id) VALUES (?, ?, ?, 'Pending', ?, ?, ?, ?, ?, ?)",
            (instance_id, name, execution_id, input_json, timestamp(now), timestamp(now), *(parent or (None,) * 3)),
        )
        started = event(
            EventType.EXECUTION_STARTED,
            now,
            Name=name,
            Version="",
            Input=input_json,
            OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution_id},
            ParentInstance=(
                {
                    "OrchestrationInstance": {"InstanceId": parent[0], "ExecutionId": parent[1]},
                    "TaskScheduleId": parent[2],
                }
                if parent
                else None
            ),
        )
        self._post(db, instance_id, execution_id, started)

    def _forget(self, db: Any, instance_id: str, *, keep_instance: bool) -> None:
        for table in ("history", "actions", "work"):
            db.execute(f"DELETE FROM {table} WHERE instance_id = ?", (instance_id,))  # noqa: S608 - fixed names
        db.execute("DELETE FROM inbox WHERE instance_id = ?", (instance_id,))
        if not keep_instance:
            db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def _post(
        self,
        db: Any,
        instance_id: str,
        execution_id: str | None,
        ev: dict[str, Any],
        *,
        meta_info: dict[str, Any] | None = None,
        visible_at: float | None = None,
        timer_id: int | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO inbox (instance_id, execution_id, event, meta, timer_id, visible_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                instance_id,
                execution_id,
                dumps(ev),
                dumps(meta_info) if meta_info else None,
                timer_id,
                self.clock() if visible_at is None else visible_at,
            ),
        )

    def raise_event(self, instance_id: str, name: str, data_json: str | None) -> None:
        with self.store.tx() as db:
            row = db.execute("SELECT status FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                raise InstanceNotFoundError(instance_id)
            if row["status"] in TERMINAL_STATES:
                raise InstanceGoneError(instance_id)
            ev = event(EventType.EVENT_RAISED, _now_dt(self.clock), Name=name, Input=data_json)
            self._post(db, instance_id, None, ev)
        self._notify()

    def terminate(self, instance_id: str, reason: str) -> None:
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                raise InstanceNotFoundError(instance_id)
            if row["status"] in TERMINAL_STATES:
                return
            db.execute("DELETE FROM inbox WHERE instance_id = ?", (instance_id,))
            db.execute("DELETE FROM work WHERE instance_id = ?", (instance_id,))
            self._finish(db, row, "Terminated", dumps(reason), failure=f"terminated: {reason}")
        self._notify()

    def purge(self, instance_id: str) -> int:
        with self.store.tx() as db:
            row = db.execute("SELECT status FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None or row["status"] not in TERMINAL_STATES:
                return 0
            self._forget(db, instance_id, keep_instance=False)
            return 1

    def purge_where(self, statuses: list[str] | None, created_from: str | None, created_to: str | None) -> int:
        ids = [s["instanceId"] for s in self.query(statuses or list(TERMINAL_STATES), created_from, created_to, None)]
        return sum(self.purge(i) for i in ids)

    def status(
        self,
        instance_id: str,
        *,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = True,
    ) -> dict[str, Any] | None:
        with self.store.read() as db:
            row = db.execute("SELECT * FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                return None
            body = self._status_body(row, show_input=show_input)
            if show_history:
                events = [
                    json.loads(r["event"])
                    for r in db.execute("SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,))
                ]
                body["historyEvents"] = [self._public_event(e, show_history_output) for e in events]
            return body

    def query(
        self,
        statuses: list[str] | None,
        created_from: str | None,
        created_to: str | None,
        prefix: str | None,
        *,
        show_input: bool = False,
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM instances WHERE 1 = 1", []
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += statuses
        if created_from:
            sql += " AND created_at >= ?"
            args.append(created_from)
        if created_to:
            sql += " AND created_at <= ?"
            args.append(created_to)
        if prefix:
            sql += " AND instance_id LIKE ? ESCAPE '\\'"
            args.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        with self.store.read() as db:
            rows = db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [self._status_body(r, show_input=show_input) for r in rows]

    @staticmethod
    def _status_body(row: Any, *, show_input: bool) -> dict[str, Any]:
        def load(value: str | None) -> Any:
            return json.loads(value) if value is not None else None

        body: dict[str, Any] = {
            "name": row["name"],
            "instanceId": row["instance_id"],
            "runtimeStatus": row["status"],
            "input": load(row["input"]) if show_input else None,
            "customStatus": load(row["custom_status"]),
            "output": load(row["output"]),
            "createdTime": row["created_at"][:19] + "Z",
            "lastUpdatedTime": row["updated_at"][:19] + "Z",
        }
        return body

    @staticmethod
    def _public_event(ev: dict[str, Any], show_output: bool) -> dict[str, Any]:
        out = {"EventType": EventType(ev["EventType"]).name.title().replace("_", ""), "Timestamp": ev["Timestamp"]}
        for key in ("Name", "TaskScheduledId", "TimerId", "FireAt", "Reason"):
            if key in ev:
                out[key] = ev[key]
        if show_output and "Result" in ev:
            out["Result"] = ev["Result"]
        return out

    # --- the orchestration loop ----------------------------------------------------------------------------

    def _orchestration_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                ready, next_at = self._ready_instances()
                for instance_id in ready:
                    if self._stopping.is_set():
                        return
                    self.run_episode(instance_id)
                if not ready:
                    wait = 0.5 if next_at is None else max(0.0, min(0.5, next_at - self.clock()))
                    with self._wake:
                        self._wake.wait(wait)
            except Exception:
                log.exception("orchestration loop error")
                time.sleep(0.2)

    def _ready_instances(self) -> tuple[list[str], float | None]:
        now = self.clock()
        with self.store.read() as db:
            ready = [
                r[0]
                for r in db.execute(
                    "SELECT instance_id FROM inbox WHERE visible_at <= ? GROUP BY instance_id ORDER BY MIN(id)", (now,)
                )
            ]
            nxt = db.execute("SELECT MIN(visible_at) FROM inbox WHERE visible_at > ?", (now,)).fetchone()[0]
        return ready, nxt

    def run_episode(self, instance_id: str) -> None:
        with self.store.tx() as db:
            inst = db.execute("SELECT * FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            rows = db.execute(
                "SELECT * FROM inbox WHERE instance_id = ? AND visible_at <= ? ORDER BY id", (instance_id, self.clock())
            ).fetchall()
            if inst is None or inst["status"] in TERMINAL_STATES:
                db.execute("DELETE FROM inbox WHERE instance_id = ? AND visible_at <= ?", (instance_id, self.clock()))
                return
            stale = [r for r in rows if r["execution_id"] not in (None, inst["execution_id"])]
            for r in stale:
                db.execute("DELETE FROM inbox WHERE id = ?", (r["id"],))
            batch = self._batch([r for r in rows if r not in stale])
            if batch:
                self._episode(db, inst, batch)
                self.episodes += 1
        self._notify()

    @staticmethod
    def _batch(rows: list[Any]) -> list[Any]:
        """Visible rows in order, but a retry event (which makes the SDK allocate a task id) only comes first."""
        batch: list[Any] = []
        for r in rows:
            if r["meta"] is not None and json.loads(r["meta"]).get("allocates"):
                if batch:
                    break
                batch.append(r)
                continue
            batch.append(r)
        return batch

    def _episode(self, db: Any, inst: Any, batch: list[Any]) -> None:
        instance_id, execution_id = inst["instance_id"], inst["execution_id"]
        now = _now_dt(self.clock)
        next_id = int(inst["next_task_id"])
        history = [
            json.loads(r["event"])
            for r in db.execute("SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,))
        ]
        for ev in history:
            ev["IsPlayed"] = True
        new_events: list[dict[str, Any]] = [event(EventType.ORCHESTRATOR_STARTED, now)]
        retries: list[tuple[int, dict[str, Any]]] = []
        for row in batch:
            ev = json.loads(row["event"])
            meta_info = json.loads(row["meta"]) if row["meta"] else {}
            new_events.append(ev)
            db.execute("DELETE FROM inbox WHERE id = ?", (row["id"],))
            if meta_info.get("kind") == "retry-failed":
                timer_id, next_id = next_id, next_id + 1
                fire = self.clock() + _retry_delay(meta_info["retry"], int(meta_info["attempt"]))
                new_events.append(
                    event(EventType.TIMER_CREATED, now, timer_id, FireAt=timestamp(datetime.fromtimestamp(fire, UTC)))
                )
                fired = event(
                    EventType.TIMER_FIRED, now, TimerId=timer_id, FireAt=timestamp(datetime.fromtimestamp(fire, UTC))
                )
                retry_meta = {**meta_info, "kind": "retry-timer"}
                retry_meta["allocates"] = int(meta_info["attempt"]) < int(meta_info["retry"]["maxNumberOfAttempts"])
                self._post(
                    db, instance_id, execution_id, fired, meta_info=retry_meta, visible_at=fire, timer_id=timer_id
                )
            elif meta_info.get("kind") == "retry-timer" and meta_info.get("allocates"):
                retry_id, next_id = next_id, next_id + 1
                new_events.append(event(EventType.TASK_SCHEDULED, now, retry_id, Name=meta_info["name"]))
                retries.append((retry_id, {**meta_info, "attempt": int(meta_info["attempt"]) + 1}))

        context = episode_context(history, new_events, inst["input"], instance_id, inst["parent_instance_id"])
        result = self._call_orchestrator(inst["name"], context)
        error, actions = result.error, result.actions
        recorded = db.execute(
            "SELECT idx, action_type, name, task_id FROM actions WHERE instance_id = ? ORDER BY idx", (instance_id,)
        ).fetchall()
        if error is None:
            error = self._nondeterminism(recorded, actions)
        for retry_id, spec in retries:
            self._schedule_task(db, inst, retry_id, spec)
        continue_as_new: Action | None = None
        if error is None:
            for idx, action in enumerate(actions):
                if idx < len(recorded):
                    if action.action_type is ActionType.CREATE_TIMER and action.is_canceled:
                        db.execute(
                            "DELETE FROM inbox WHERE instance_id = ? AND timer_id = ? AND execution_id = ?",
                            (instance_id, recorded[idx]["task_id"], execution_id),
                        )
                    continue
                if action.action_type is ActionType.CONTINUE_AS_NEW:
                    continue_as_new = action
                    continue
                if action.action_type in (ActionType.CALL_ENTITY, ActionType.SIGNAL_ENTITY, ActionType.CALL_HTTP):
                    error = f"{action.action_type.name} is not supported by the local runtime"
                    break
                task_id: int | None = None
                if action.takes_task_id:
                    task_id, next_id = next_id, next_id + 1
                db.execute(
                    "INSERT INTO actions (instance_id, idx, action_type, name, task_id) VALUES (?, ?, ?, ?, ?)",
                    (instance_id, idx, int(action.action_type), action.name, task_id),
                )
                if task_id is not None:
                    new_events.append(self._schedule_action(db, inst, action, task_id, now))

        new_events.append(event(EventType.ORCHESTRATOR_COMPLETED, now))
        seq = int(db.execute("SELECT COUNT(*) FROM history WHERE instance_id = ?", (instance_id,)).fetchone()[0])
        db.executemany(
            "INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)",
            [(instance_id, seq + i, dumps(e)) for i, e in enumerate(new_events)],
        )
        custom = result.custom_status
        db.execute(
            "UPDATE instances SET next_task_id = ?, custom_status = ?, updated_at = ?, status = 'Running'"
            " WHERE instance_id = ?",
            (next_id, dumps(custom) if custom is not None else None, timestamp(now), instance_id),
        )
        inst = db.execute("SELECT * FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
        if error is not None:
            db.execute("DELETE FROM inbox WHERE instance_id = ? AND execution_id = ?", (instance_id, execution_id))
            db.execute("DELETE FROM work WHERE instance_id = ?", (instance_id,))
            self._finish(db, inst, "Failed", dumps(error), failure=error)
        elif continue_as_new is not None:
            self._continue_as_new(db, inst, continue_as_new.raw.get("input"))
        elif result.is_done:
            output = result.output
            db.execute("DELETE FROM inbox WHERE instance_id = ? AND execution_id = ?", (instance_id, execution_id))
            self._finish(db, inst, "Completed", dumps(output))

    def _call_orchestrator(self, name: str, context: dict[str, Any]) -> EpisodeResult:
        fn = self.orchestrators.get(name)
        if fn is None:
            return EpisodeResult(error=f"The orchestrator function '{name}' doesn't exist")
        result = replay_episode(fn.func, context)
        if result.error is not None:
            return EpisodeResult(error=f"Orchestrator function '{name}' failed: {result.error}")
        return result

    @staticmethod
    def _nondeterminism(recorded: list[Any], actions: list[Action]) -> str | None:
        if len(actions) < len(recorded):
            return (
                "Non-deterministic workflow detected: the orchestrator scheduled "
                f"{len(actions)} actions on replay where the history has {len(recorded)}"
            )
        for row, action in zip(recorded, actions, strict=False):
            if int(row["action_type"]) != int(action.action_type) or row["name"] != action.name:
                return (
                    f"Non-deterministic workflow detected: action #{row['idx']} was "
                    f"{ActionType(int(row['action_type'])).name} '{row['name']}' in the history but is now "
                    f"{action.action_type.name} '{action.name}'"
                )
        return None

    def _schedule_action(self, db: Any, inst: Any, action: Action, task_id: int, now: datetime) -> dict[str, Any]:
        raw = action.raw
        if action.action_type in ACTIVITY_ACTIONS or action.action_type in SUB_ORCHESTRATION_ACTIONS:
            spec = {
                "name": raw["functionName"],
                "input": raw.get("input"),
                "retry": raw.get("retryOptions") if action.action_type in RETRY_ACTIONS else None,
                "attempt": 1,
                "sub": action.action_type in SUB_ORCHESTRATION_ACTIONS,
                "childId": raw.get("instanceId"),
            }
            self._schedule_task(db, inst, task_id, spec)
            if spec["sub"]:
                return event(EventType.SUB_ORCHESTRATION_CREATED, now, task_id, Name=raw["functionName"])
            return event(EventType.TASK_SCHEDULED, now, task_id, Name=raw["functionName"])
        if action.action_type is ActionType.CREATE_TIMER:
            fire_at = raw["fireAt"]
            fire = datetime.fromisoformat(fire_at.replace("Z", "+00:00")).timestamp()
            fired = event(EventType.TIMER_FIRED, now, TimerId=task_id, FireAt=fire_at)
            if not action.is_canceled:
                self._post(db, inst["instance_id"], inst["execution_id"], fired, visible_at=fire, timer_id=task_id)
            return event(EventType.TIMER_CREATED, now, task_id, FireAt=fire_at)
        raise AssertionError(f"unexpected action {action.action_type}")

    def _schedule_task(self, db: Any, inst: Any, task_id: int, spec: dict[str, Any]) -> None:
        if spec.get("sub"):
            child_id = spec.get("childId") or f"{inst['instance_id']}:{task_id}"
            if spec["name"] not in self.orchestrators:
                self._post_failure(db, inst, task_id, spec, f"The orchestrator function '{spec['name']}' doesn't exist")
                return
            self._create_instance(
                db,
                child_id,
                spec["name"],
                spec.get("input"),
                parent=(inst["instance_id"], inst["execution_id"], task_id),
            )
            db.execute("UPDATE instances SET parent_spec = ? WHERE instance_id = ?", (dumps(spec), child_id))
            return
        db.execute(
            "INSERT INTO work (instance_id, execution_id, task_id, name, input, retry, attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                inst["instance_id"],
                inst["execution_id"],
                task_id,
                spec["name"],
                spec.get("input"),
                dumps(spec) if spec.get("retry") else None,
                int(spec.get("attempt", 1)),
            ),
        )

    def _post_failure(
        self, db: Any, inst: Any, task_id: int, spec: dict[str, Any], reason: str, details: str = ""
    ) -> None:
        """Report a failed task (activity or sub-orchestration) to the instance, with a retry when one is left."""
        sub = bool(spec.get("sub"))
        ev_type = EventType.SUB_ORCHESTRATION_FAILED if sub else EventType.TASK_FAILED
        failed = event(ev_type, _now_dt(self.clock), TaskScheduledId=task_id, Reason=reason, Details=details)
        meta_info = None
        if spec.get("retry"):
            meta_info = {**spec, "kind": "retry-failed", "allocates": True}
        self._post(db, inst["instance_id"], inst["execution_id"], failed, meta_info=meta_info)

    def _continue_as_new(self, db: Any, inst: Any, input_json: str | None) -> None:
        instance_id = inst["instance_id"]
        pending_events = db.execute(
            "SELECT event FROM inbox WHERE instance_id = ? AND execution_id IS NULL ORDER BY id", (instance_id,)
        ).fetchall()
        for table in ("history", "actions", "work"):
            db.execute(f"DELETE FROM {table} WHERE instance_id = ?", (instance_id,))  # noqa: S608 - fixed names
        db.execute("DELETE FROM inbox WHERE instance_id = ?", (instance_id,))
        execution_id = uuid.uuid4().hex
        now = _now_dt(self.clock)
        db.execute(
            "UPDATE instances SET execution_id = ?, input = ?, status = 'ContinuedAsNew', next_task_id = 0,"
            " updated_at = ? WHERE instance_id = ?",
            (execution_id, input_json, timestamp(now), instance_id),
        )
        started = event(
            EventType.EXECUTION_STARTED,
            now,
            Name=inst["name"],
            Version="",
            Input=input_json,
            OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution_id},
        )
        self._post(db, instance_id, execution_id, started)
        for row in pending_events:
            self._post(db, instance_id, None, json.loads(row["event"]))

    def _finish(self, db: Any, inst: Any, status: str, output_json: str, *, failure: str | None = None) -> None:
        now = _now_dt(self.clock)
        db.execute(
            "UPDATE instances SET status = ?, output = ?, updated_at = ? WHERE instance_id = ?",
            (status, output_json, timestamp(now), inst["instance_id"]),
        )
        parent_id = inst["parent_instance_id"]
        if parent_id is None:
            return
        parent = db.execute("SELECT * FROM instances WHERE instance_id = ?", (parent_id,)).fetchone()
        if parent is None or parent["execution_id"] != inst["parent_execution_id"]:
            return
        task_id = int(inst["parent_task_id"])
        spec = json.loads(inst["parent_spec"]) if inst["parent_spec"] else {"sub": True}
        if status == "Completed":
            done = event(EventType.SUB_ORCHESTRATION_COMPLETED, now, TaskScheduledId=task_id, Result=output_json)
            self._post(db, parent_id, parent["execution_id"], done)
        else:
            self._post_failure(db, parent, task_id, spec, failure or status)

    # --- activities ----------------------------------------------------------------------------------------

    def _activity_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.run_next_activity():
                    with self._wake:
                        self._wake.wait(0.5)
            except Exception:
                log.exception("activity loop error")
                time.sleep(0.2)

    def run_next_activity(self) -> bool:
        """Lease the oldest pending activity and run it in this thread, its result posted to its instance; False
        when none is pending. The worker threads call it in a loop; an engine not started can be stepped with it
        and ``run_episode``."""
        item = self._lease_work()
        if item is None:
            return False
        self._run_activity(item)
        return True

    def _lease_work(self) -> Any:
        now = self.clock()
        with self.store.read() as db:  # a plain read first: most polls find nothing, and take no write lock
            if db.execute("SELECT 1 FROM work WHERE leased_until < ? LIMIT 1", (now,)).fetchone() is None:
                return None
        with self.store.tx() as db:
            free = db.execute(
                "SELECT id, name, instance_id, leased_by FROM work WHERE leased_until < ? ORDER BY id LIMIT 1", (now,)
            ).fetchone()
            if free is None:
                return None
            if free["leased_by"] not in (None, self.owner):
                log.warning(
                    "activity %s of %s: the lease of %s expired; running it here",
                    free["name"],
                    free["instance_id"],
                    free["leased_by"],
                )
            return db.execute(
                "UPDATE work SET leased_until = ?, leased_by = ? WHERE id = ? RETURNING *",
                (now + self.lease_seconds, self.owner, free["id"]),
            ).fetchone()

    def _renew_leases(self) -> None:
        with self.store.tx() as db:
            db.execute(
                "UPDATE work SET leased_until = ? WHERE leased_by = ?", (self.clock() + self.lease_seconds, self.owner)
            )

    def _run_activity(self, item: Any) -> None:
        fn = self.activities.get(item["name"])
        result_json: str | None = None
        failure: tuple[str, str] | None = None
        if fn is None:
            failure = (f"The activity function '{item['name']}' doesn't exist", "")
        else:
            try:
                value = ActivityTriggerConverter.decode(
                    meta.Datum(type="json", value=item["input"] if item["input"] is not None else "null"),
                    trigger_metadata={},
                )
                out = invoke(fn, value)
                result_json = ActivityTriggerConverter.encode(out, expected_type=None).value
            except Exception as exc:
                log.warning("activity %s of %s failed: %s", item["name"], item["instance_id"], type(exc).__name__)
                failure = (
                    f"Activity function '{item['name']}' failed: {exc}",
                    "".join(traceback.format_exception(exc)),
                )
        with self.store.tx() as db:
            still = db.execute("DELETE FROM work WHERE id = ? RETURNING id", (item["id"],)).fetchone()
            inst = db.execute("SELECT * FROM instances WHERE instance_id = ?", (item["instance_id"],)).fetchone()
            if still is None or inst is None or inst["execution_id"] != item["execution_id"]:
                return
            if failure is None:
                done = event(
                    EventType.TASK_COMPLETED, _now_dt(self.clock), TaskScheduledId=item["task_id"], Result=result_json
                )
                self._post(db, item["instance_id"], item["execution_id"], done)
            else:
                spec = json.loads(item["retry"]) if item["retry"] else {"name": item["name"]}
                self._post_failure(db, inst, int(item["task_id"]), spec, *failure)
        self._notify()

    # --- test helpers --------------------------------------------------------------------------------------

    def wait_for(
        self, instance_id: str, timeout: float = 10.0, statuses: frozenset[str] = TERMINAL_STATES
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.status(instance_id)
            if body is not None and body["runtimeStatus"] in statuses:
                return body
            time.sleep(0.01)
        raise TimeoutError(
            f"instance {instance_id} not in {sorted(statuses)} after {timeout}s: {self.status(instance_id)}"
        )
