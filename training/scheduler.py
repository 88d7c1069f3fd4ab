"""The flywheel's schedule: APScheduler runs `run_cycle` on `FLYWHEEL_CYCLE_CRON`.

    flywheel scheduler            # standalone, blocking (e.g. a second container next to the bot)
    flywheel bot                  # the bot starts the same schedule in the background

The job store is SQLite (`$FLYWHEEL_HOME/scheduler.db`), so a run missed while the process was down
still happens at the next start (within the grace time); `coalesce` folds several missed runs into
one, `max_instances=1` keeps one per process, and the cycle's file lock keeps one across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from storage.config import Settings, get_settings
from storage.db import Store

log = logging.getLogger(__name__)

JOB_ID = "flywheel-cycle"
NEXT_RUN_KEY = "next_training_run_at"  # read by /flywheel status and the App Home

_notify: Callable[[str], None] | None = None  # set by the bot to post results to Slack


def scheduled_cycle() -> None:
    """The job. Module-level and argument-free, as APScheduler's persistent job stores require."""
    from training.cycle import run_cycle

    settings = get_settings()
    result = run_cycle(settings, trigger="schedule")
    log.info("scheduled cycle: %s", result.summary())
    if _notify is not None and result.status != "busy":
        try:
            _notify(f"Scheduled flywheel cycle — {result.summary()}")
        except Exception:
            log.exception("could not post the scheduled cycle's result")


def build_scheduler(settings: Settings, *, blocking: bool = False, notify: Callable[[str], None] | None = None):
    """A scheduler with the cycle job registered (not started), or None when `cycle_cron` is empty."""
    if not settings.cycle_cron.strip():
        return None
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    global _notify
    _notify = notify
    settings.ensure_dirs()
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{settings.home / 'scheduler.db'}")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 6 * 3600},
    )
    scheduler.add_job(
        scheduled_cycle, CronTrigger.from_crontab(settings.cycle_cron), id=JOB_ID, replace_existing=True
    )
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED

    after_run = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
    scheduler.add_listener(lambda event: record_next_run(scheduler, settings), mask=after_run)
    return scheduler


def record_next_run(scheduler: Any, settings: Settings) -> str | None:
    """Write the next run time where `/flywheel status` and the App Home read it."""
    from datetime import datetime

    from apscheduler.triggers.cron import CronTrigger

    job = scheduler.get_job(JOB_ID)
    next_time = getattr(job, "next_run_time", None)  # pending jobs (scheduler not started) have none yet
    if next_time is None and settings.cycle_cron.strip():
        trigger = CronTrigger.from_crontab(settings.cycle_cron)
        next_time = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    when = next_time.isoformat() if next_time else None
    store = Store(settings.db_path)
    try:
        store.set_kv(NEXT_RUN_KEY, when)
    finally:
        store.close()
    return when


def start(scheduler: Any, settings: Settings) -> str | None:
    """Record the next run, then start (a BlockingScheduler does not return from `start`)."""
    when = record_next_run(scheduler, settings)
    scheduler.start()
    return when
