"""Timer functions: purge expired idempotency keys and approval-link nonces; the outbox sweeper (publish what was
never enqueued, fail what was never started); purge the payloads of changes that ended longer ago than the retention."""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from shared import bootstrap
from shared.app.maintenance import purge_expired

bp = df.Blueprint()
log = logging.getLogger("writeback.maintenance")


@bp.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def purge_expired_keys(timer: func.TimerRequest) -> None:
    gateway = bootstrap.gateway()
    nonces = gateway.approval_nonces if gateway.approval_links is not None else None
    purged = purge_expired(gateway.idempotency_store, nonces)
    log.info("purged %d expired idempotency keys and %d approval-link nonces", purged.keys, purged.nonces)


@bp.timer_trigger(arg_name="timer", schedule="*/30 * * * * *", run_on_startup=False, use_monitor=False)
def sweep_unpublished_changes(timer: func.TimerRequest) -> None:
    result = bootstrap.gateway().sweeper.sweep()
    if result.published:
        log.info("republished %d changes left unpublished", result.published)
    if result.failed:
        log.warning("%d changes were never picked up (dead-lettered messages?) and are now failed", result.failed)


@bp.timer_trigger(arg_name="timer", schedule="0 5/15 * * * *", run_on_startup=False, use_monitor=True)
def purge_old_payloads(timer: func.TimerRequest) -> None:
    result = bootstrap.gateway().payload_purger.purge()
    log.info(
        "purged the payloads of %d changes past their retention (%d read, %d due, %d scheduled to look at again)",
        result.purged,
        result.read,
        result.due,
        result.scheduled,
    )
