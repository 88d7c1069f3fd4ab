"""What the Slack listener modules share, so none of them imports bot/app.py back.

bot/app.py builds the Bolt app and imports the listener modules (bot/answering.py, bot/assistant.py,
bot/feedback.py, bot/commands.py, bot/files.py, bot/scopes.py, bot/hardening.py); they depend only on
this module for the shared constants, the bounded worker pool and `Bot`, the structural type of the
running bot they are handed (bot/app.py's `FlywheelBot` is the one implementation).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_sdk import WebClient

    from agent.graph import Agent
    from storage.config import Settings
    from storage.db import Store

log = logging.getLogger(__name__)

BUSY = "I'm busy right now — please try again in a minute."


def parse_list(value: str) -> set[str]:
    """A comma-separated setting (user ids, emoji names) as a set, blanks dropped."""
    return {item.strip() for item in value.split(",") if item.strip()}


class WorkerPool:
    """A thread pool that refuses work instead of queueing without bound.

    Capacity is `workers` running + `queue_size` waiting; `submit` returns False when full so the
    caller can tell the user, rather than letting questions pile up for minutes behind a slow model."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self.workers = max(1, workers)
        self.capacity = self.workers + max(0, queue_size)
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="flywheel-worker")

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:  # the job's own handler should have caught it; never lose a traceback
                log.exception("worker job %s failed", getattr(fn, "__name__", fn))
            finally:
                self._slots.release()

        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down
            self._slots.release()
            return False
        return True

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


class Bot(Protocol):
    """The running bot as the listeners see it: the Bolt app and its client, the worker pool, the agent
    and the store, the bot's own identity and its admins."""

    settings: Settings
    app: App
    client: WebClient
    store: Store
    agent: Agent
    bot_user_id: str
    bot_id: str
    pool: WorkerPool
    admins: set[str]
    scheduler: Any  # the flywheel's APScheduler once started (bot/flywheel.py), else None

    def is_admin(self, user_id: str | None) -> bool:
        """Whether `user_id` is one of FLYWHEEL_ADMIN_USERS."""
        ...

    def sources_for(self, channel: str) -> list[str] | None:
        """`sources=` for an answer in `channel` (its knowledge scope); None = no filter."""
        ...
