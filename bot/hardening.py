"""Guards for a bot a whole workspace can reach: question size and rate, ingest roots, log hygiene.

* `register_question_guard(bot)`: a global Bolt middleware, registered before the answering
  listeners (and before any Assistant middleware), that turns away questions longer than
  `max_question_chars` and users over `answers_per_minute` with a polite threaded reply. It
  recognises questions the way the answering listeners do (app_mention, or a DM message without
  subtype, from a person) and leaves everything else alone.
* `ingest_path(settings, store, text)`: `/flywheel ingest` reads only under `ingest_roots`.
* `protect_logs()`: no message text or token reaches a log record, at any level.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slack_bolt import BoltResponse

from storage.config import Settings
from storage.db import Store

if TYPE_CHECKING:
    from bot.common import Bot

log = logging.getLogger(__name__)

TOO_LONG = ("That question is {length:,} characters long — I can take up to {limit:,}. Could you ask it more "
            "briefly, or split it into a few questions?")
SLOW_DOWN = ("You've asked me {limit} questions in the last minute — please give me about {wait} seconds and ask "
             "again. (This keeps answers fast for everyone.)")
WINDOW_SECONDS = 60.0
_MENTION = re.compile(r"<@[UW][A-Z0-9]+(\|[^>]*)?>")


# --- questions: length cap and per-user rate limit --------------------------------------------------
class RateLimiter:
    """At most `limit` events per key in any sliding window of `window` seconds (in memory: a
    restart forgets, which only ever lets a user ask sooner)."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()  # Bolt dispatches concurrently (HTTP threads, socket workers)

    def check(self, key: str) -> float:
        """0.0 and the event is counted, or the seconds until `key` may go again (not counted)."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            seen = self._seen[key]
            while seen and now - seen[0] >= self.window:
                seen.popleft()
            if len(seen) >= self.limit:
                return max(0.0, self.window - (now - seen[0]))
            seen.append(now)
            return 0.0


def question_event(body: dict[str, Any], bot_user_id: str) -> dict[str, Any] | None:
    """The event if `body` carries a question from a person (as bot/answering.py reads them), else None.

    File shares are not questions (bot/files.py handles them), nor are edits, deletions, joins or
    anything a bot wrote."""
    event = body.get("event") if isinstance(body, dict) and body.get("type") == "event_callback" else None
    if not isinstance(event, dict) or event.get("subtype") or event.get("files"):
        return None
    if event.get("bot_id") or event.get("bot_profile") or not event.get("user"):
        return None
    if bot_user_id and event.get("user") == bot_user_id:
        return None
    if event.get("type") == "app_mention" or (event.get("type") == "message" and event.get("channel_type") == "im"):
        return event
    return None


def question_length(text: str) -> int:
    """Characters a person typed, without @-mentions (Slack encodes each as `<@U…>`)."""
    return len(" ".join(_MENTION.sub(" ", text).split()))


def register_question_guard(bot: Bot) -> RateLimiter:
    """Install the length/rate middleware on `bot.app`; returns the limiter (tests drive its clock)."""
    limiter = RateLimiter(bot.settings.answers_per_minute)

    def guard_questions(body: dict[str, Any], context: Any, next: Callable[[], None]) -> Any:
        event = question_event(body, bot.bot_user_id or context.get("bot_user_id") or "")
        if event is None:
            return next()
        length = question_length(event.get("text") or "")
        limit = bot.settings.max_question_chars
        if limit > 0 and length > limit:
            reply = TOO_LONG.format(length=length, limit=limit)
        else:
            wait = limiter.check(event["user"])
            if not wait:
                return next()
            reply = SLOW_DOWN.format(limit=limiter.limit, wait=max(1, round(wait)))
            log.info("rate limit: %s in %s asked too often", event["user"], event.get("channel"))
        _reply_in_thread(bot, event, reply)
        return BoltResponse(status=200, body="")  # handled: acked, no listener runs

    bot.app.middleware(guard_questions)
    return limiter


def _reply_in_thread(bot: Bot, event: dict[str, Any], text: str) -> None:
    try:
        bot.client.chat_postMessage(channel=event["channel"], thread_ts=event.get("thread_ts") or event["ts"],
                                    text=text)
    except Exception:  # the refusal is a courtesy; never log the question itself
        log.warning("could not reply in %s", event.get("channel"), exc_info=True)


# --- /flywheel ingest: configured roots only ---------------------------------------------------------
def ingest_roots(settings: Settings, store: Store) -> list[Path]:
    """`settings.ingest_roots`, or — when empty — the folders the knowledge base already holds
    documents from (each resolved): Slack may refresh what the host ingested, and reach nothing else."""
    configured = [p.strip() for p in settings.ingest_roots.split(",") if p.strip()]
    if configured:
        return [Path(p).expanduser().resolve() for p in configured]
    folders = {str(Path(row["path"]).parent) for row in store.query("SELECT path FROM documents")}
    return [Path(f) for f in sorted(folders)]


def ingest_path(settings: Settings, store: Store, text: str) -> Path | str:
    """The resolved path `/flywheel ingest <text>` may read, or the reason it may not (a reply).

    Resolving first means `..`, `~` and symlinks can't step outside a root."""
    path = Path(text).expanduser().resolve()
    roots = ingest_roots(settings, store)
    if any(path == root or root in path.parents for root in roots):
        return path
    if not roots:
        return ("`/flywheel ingest` is limited to configured folders and none are set: ask the bot's operator to "
                "set FLYWHEEL_INGEST_ROOTS.")
    listed = ", ".join(f"`{r}`" for r in roots[:10]) + (" …" if len(roots) > 10 else "")
    return (f"`{text}` is outside the folders Slack may ingest from ({listed}). The bot's operator can add "
            "folders with FLYWHEEL_INGEST_ROOTS.")


# --- logs: no message text or tokens -------------------------------------------------------------------
# slack_sdk and slack_bolt log whole request/response payloads (message text, form bodies) at DEBUG, and
# Bolt's "unhandled request" warnings quote the request body.
PAYLOAD_LOGGERS = ("slack_sdk", "slack_bolt", "uvicorn.access")
_PAYLOAD_WARNINGS = ("Unhandled request", "A global middleware (")
_SECRET = re.compile(r"\b(xox[abposer]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sk-ant-[A-Za-z0-9_-]+|sk-[A-Za-z0-9_-]{20,})")
_installed = False
_install_lock = threading.Lock()


def redact(text: str) -> str:
    """Slack tokens and model-API keys replaced by `[redacted]`."""
    return _SECRET.sub("[redacted]", text)


def _scrub(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it for logging's own error report
        return record
    if record.name.startswith(PAYLOAD_LOGGERS) and message.startswith(_PAYLOAD_WARNINGS):
        message = message.split("(", 1)[0].rstrip() + " (request body withheld)"
        record.msg, record.args = message, None
    if _SECRET.search(message):
        record.msg, record.args = redact(message), None
    return record


def protect_logs() -> None:
    """Keep message text and tokens out of every log record, whatever level the operator picks.

    Payload-logging libraries are held at INFO (their DEBUG lines are request bodies; Bolt copies the
    root level onto its loggers when an App is built, so call this after building it), Bolt's
    body-quoting warnings lose the body, and every record passes through `redact` — via the record
    factory, so handlers added later are covered too. Idempotent."""
    global _installed
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(PAYLOAD_LOGGERS)]
    for name in {*PAYLOAD_LOGGERS, *names}:
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET (inherit) included: pin it, whatever the root says
            logger.setLevel(logging.INFO)
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return _scrub(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed = True
