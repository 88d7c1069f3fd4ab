"""Files shared with the bot in Slack become documents: an admin drops a PDF in a DM (or @mentions
the bot with an attachment) and it is ingested exactly like `flywheel ingest <file>`.

    DM with a file (message, subtype file_share) ─┐                   ┌─ non-admin → polite refusal
    @mention with an attachment (app_mention)  ───┴─ on_shared_files ─┤
                                                                      └─ admin → WorkerPool: for each file
        "Reading `x.pdf`…" in the thread → files.info if the event's copy is partial → type and size checks
        → download `url_private_download` with the bot token (streamed, capped) → $FLYWHEEL_HOME/slack_files/<name>
        → KnowledgeBase.ingest → the reply is edited into what went in (chunks, pages) or why not

Needs the `files:read` scope (bot/manifest.yml). Files are kept by name, so sharing an updated
`runbook.md` replaces the old one (incremental ingest, as for any path); a file that fails to parse
leaves the previous version serving. Listeners here must be registered before bot/answering.py's:
Bolt runs the first listener whose matchers accept an event, so events with files stop here and
everything else falls through to answering.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from bot.common import BUSY
from storage.parsing import SUPPORTED_SUFFIXES

if TYPE_CHECKING:
    from bot.common import Bot

log = logging.getLogger(__name__)

# One ingest at a time from Slack (shared files, `/flywheel ingest`): two runs over the same file
# would race on its chunks, and on a 2-core host a second concurrent embedder only slows both.
INGEST_LOCK = threading.Lock()

REFUSED = ("Thanks for the file! Only Flywheel admins can add documents by sharing them with me — please ask an "
           "admin to add it. You can still ask me questions about the documents I have.")
READING = "Reading {names}…"
_MB = 1024 * 1024
# Slack's `filetype` for files whose name lacks a usable extension (snippets, pasted text).
FILETYPE_SUFFIX = {"text": ".txt", "markdown": ".md", "post": ".md", "pdf": ".pdf", "html": ".html",
                   "docx": ".docx", "pptx": ".pptx", "xlsx": ".xlsx", "csv": ".csv", "tsv": ".tsv"}


class FileRejected(Exception):
    """A shared file that is not ingested; the message is shown to the admin as is."""


@dataclass
class Outcome:
    name: str
    ok: bool
    text: str


def _from_person(event: dict[str, Any], bot_user_id: str) -> bool:
    return bool(event.get("user")) and not (event.get("bot_id") or event.get("bot_profile")
                                            or (bot_user_id and event.get("user") == bot_user_id))


def shares_files(event: dict[str, Any]) -> bool:
    """A person's message with files: a DM file share, or an @mention with an attachment."""
    if not event.get("files"):
        return False
    if event.get("type") == "app_mention":
        return event.get("subtype") in (None, "file_share")
    return event.get("channel_type") == "im" and event.get("subtype") in (None, "file_share")


def shared_by_person(event: dict[str, Any], bot_user_id: str) -> bool:
    """`shares_files(event)`, by a person (not this or any other bot): what `on_shared_files` takes."""
    return shares_files(event) and _from_person(event, bot_user_id)


def register_files(bot: Bot) -> None:
    """Register the file listeners; call before `register_answering` (first matching listener wins)."""
    app = bot.app

    def has_files(event: dict[str, Any], context: Any) -> bool:
        return shared_by_person(event, bot.bot_user_id or context.get("bot_user_id") or "")

    @app.event("message", matchers=[has_files])
    def on_dm_file(event: dict[str, Any]) -> None:
        on_shared_files(bot, event)

    @app.event("app_mention", matchers=[has_files])
    def on_mention_file(event: dict[str, Any]) -> None:
        on_shared_files(bot, event)


def on_shared_files(bot: Bot, event: dict[str, Any]) -> None:
    """Refuse non-admins at once; hand an admin's files to the worker pool (ingest takes seconds)."""
    user = event.get("user") or ""
    allowed = bot.is_admin(user)
    names = [str(f.get("name") or f.get("id")) for f in event.get("files") or []]
    bot.store.audit(user, "slack:file", {"channel": event.get("channel"), "files": names, "allowed": allowed})
    if not allowed:
        _post(bot, event, REFUSED)
        return
    if not bot.pool.submit(ingest_shared_files, bot, event):
        _post(bot, event, BUSY)


def _thread(event: dict[str, Any]) -> str:
    return event.get("thread_ts") or event["ts"]


def _post(bot: Bot, event: dict[str, Any], text: str) -> str | None:
    try:
        return bot.client.chat_postMessage(channel=event["channel"], thread_ts=_thread(event), text=text)["ts"]
    except Exception:
        log.warning("could not reply in %s", event.get("channel"), exc_info=True)
        return None


def ingest_shared_files(bot: Bot, event: dict[str, Any]) -> list[Outcome]:
    """Runs on a worker: ingest every file of `event` and say in the thread what happened to each."""
    files = [f for f in event.get("files") or [] if isinstance(f, dict)]
    names = ", ".join(f"`{_display_name(f)}`" for f in files)
    ts = _post(bot, event, READING.format(names=names))
    outcomes = [ingest_one(bot, file) for file in files]
    text = "\n".join(("✓ " if o.ok else "✗ ") + o.text for o in outcomes) or "There was no file in that message."
    try:
        if ts is not None:
            bot.client.chat_update(channel=event["channel"], ts=ts, text=text)
        else:
            _post(bot, event, text)
    except Exception:
        log.warning("could not report the ingest in %s", event.get("channel"), exc_info=True)
    return outcomes


def ingest_one(bot: Bot, file: dict[str, Any]) -> Outcome:
    name = _display_name(file)
    try:
        info = _complete(bot, file)
        name = safe_name(info)
        _check(bot, info, name)
        return _download_and_ingest(bot, info, name)
    except FileRejected as exc:
        return Outcome(name, False, f"`{name}` was not added: {exc}")
    except Exception as exc:  # never leave the admin without an answer; the reason goes to them
        log.warning("ingesting shared file %s failed", file.get("id"), exc_info=True)
        return Outcome(name, False, f"`{name}` was not added: {type(exc).__name__}.")


def _display_name(file: dict[str, Any]) -> str:
    return str(file.get("name") or file.get("title") or file.get("id") or "file")


def _complete(bot: Bot, file: dict[str, Any]) -> dict[str, Any]:
    """The event's file object, or files.info's when the event only carries a stub (Slack sends
    `file_access: check_file_info` for files it could not inline)."""
    if file.get("url_private_download") and file.get("file_access") != "check_file_info":
        return file
    if not file.get("id"):
        raise FileRejected("Slack sent no file id.")
    return dict(bot.client.files_info(file=file["id"])["file"])


def safe_name(file: dict[str, Any]) -> str:
    """A plain file name (no folders, no leading dots) with a suffix the parsers know when Slack's
    `filetype` gives one the name lacks."""
    raw = Path(str(file.get("name") or file.get("title") or file.get("id") or "file")).name
    name = re.sub(r"[^\w.\- ]+", "_", raw).strip(" .") or "file"
    if not Path(name).suffix and file.get("filetype") in FILETYPE_SUFFIX:
        name += FILETYPE_SUFFIX[file["filetype"]]
    return name[:200]


def _check(bot: Bot, file: dict[str, Any], name: str) -> None:
    if file.get("mode") == "external" or file.get("is_external"):
        raise FileRejected("it is a link to a file stored outside Slack; share the file itself.")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise FileRejected(f"I can't read {suffix or 'files without an extension'} files (I read {kinds}).")
    limit = bot.settings.slack_file_max_mb
    size = int(file.get("size") or 0)
    if size > limit * _MB:
        raise FileRejected(f"it is {size / _MB:.1f} MB, over the {limit:g} MB limit for shared files.")
    if not file.get("url_private_download"):
        raise FileRejected("Slack offers no download for it.")


def _trusted_host(bot: Bot, url: str) -> bool:
    """The bot token only ever goes to Slack (or the configured API host: GovSlack, proxies, tests)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    api_host = urlparse(bot.settings.slack_api_url).hostname if bot.settings.slack_api_url else None
    if api_host and host == api_host:
        return True
    return parsed.scheme == "https" and (host.endswith((".slack.com", ".slack-gov.com")) or host == "slack.com")


def download(bot: Bot, url: str, target: Path, limit_bytes: int) -> int:
    """Stream `url` into `target` with the bot token; stops at `limit_bytes` (a size Slack misreported)."""
    if not _trusted_host(bot, url):
        raise FileRejected("its download address is not on Slack.")
    written = 0
    # httpx drops the Authorization header on redirects to another host.
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {bot.client.token}"},
                      follow_redirects=True, timeout=60.0) as response:
        if response.status_code != 200:
            raise FileRejected(f"Slack answered {response.status_code} to the download.")
        if "text/html" in response.headers.get("content-type", "") and target.suffix.lower() not in (".html", ".htm"):
            # Slack serves its login page instead of the file when the token lacks files:read.
            raise FileRejected("Slack did not hand the file over (does the app have the files:read scope?).")
        with target.open("wb") as sink:
            for block in response.iter_bytes():
                written += len(block)
                if written > limit_bytes:
                    raise FileRejected(f"it is over the {limit_bytes / _MB:g} MB limit for shared files.")
                sink.write(block)
    return written


def _download_and_ingest(bot: Bot, file: dict[str, Any], name: str) -> Outcome:
    folder = bot.settings.slack_files_dir
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    limit = int(bot.settings.slack_file_max_mb * _MB)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".incoming-") as tmp:
        incoming = Path(tmp) / name
        download(bot, str(file["url_private_download"]), incoming, limit)
        backup = Path(tmp) / (name + ".previous")
        with INGEST_LOCK:
            had_previous = target.exists()
            if had_previous:
                shutil.copy2(target, backup)
            incoming.replace(target)  # same folder tree: an atomic rename
            report = bot.agent.kb.ingest([target])
            result = report.files[0]
            if result.status == "failed":
                # Keep serving what was there: the old file back in place (its chunks were kept), or none.
                if had_previous:
                    backup.replace(target)
                else:
                    target.unlink(missing_ok=True)
    return describe(name, result.status, result.chunks, result.pages, result.error)


def describe(name: str, status: str, chunks: int, pages: int | None, error: str | None) -> Outcome:
    """The admin-facing line for one file."""
    if status == "failed":
        return Outcome(name, False, f"`{name}` could not be read: {error or 'unknown error'}.")
    if status == "unchanged":
        return Outcome(name, True, f"`{name}` is already in the knowledge base, unchanged ({chunks} chunks).")
    # Only paged formats (PDF, slides) have pages.
    where = f" from {pages} page{'s' if pages != 1 else ''}" if pages else ""
    verb = "updated" if status == "updated" else "added"
    return Outcome(name, True, f"`{name}` {verb}: {chunks} chunks{where}. Ask away!")
