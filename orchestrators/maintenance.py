"""Timer functions: purge expired idempotency keys, and publish changes left accepted but not enqueued."""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from shared import bootstrap
from shared.config import get_settings
from shared.maintenance import fail_stuck, purge_idempotency_keys, sweep_unpublished

bp = df.Blueprint()
log = logging.getLogger("writeback.maintenance")


@bp.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def purge_expired_keys(timer: func.TimerRequest) -> None:
    deleted = purge_idempotency_keys(bootstrap.idempotency_store())
    log.info("purged %d expired idempotency keys", deleted)


@bp.timer_trigger(arg_name="timer", schedule="*/30 * * * * *", run_on_startup=False, use_monitor=False)
def sweep_unpublished_changes(timer: func.TimerRequest) -> None:
    settings = get_settings()
    published = sweep_unpublished(bootstrap.intake(), older_than_seconds=settings.sweep_after_seconds)
    if published:
        log.info("republished %d changes left unpublished", published)
    stuck = fail_stuck(bootstrap.journal(), older_than_seconds=int(settings.stuck_after_minutes * 60))
    if stuck:
        log.warning("%d changes were never picked up (dead-lettered messages?) and are now failed", stuck)
