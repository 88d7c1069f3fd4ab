"""Knowledge scopes per channel (what Onyx calls document sets) and private documents.

A scope is a list of *entries*; each entry names documents the way an admin thinks of them:

    /srv/docs/runbooks        an absolute folder (or file): everything under it
    runbooks, eng/runbooks    a run of folder names anywhere in a document's path
    deploys.md                a file name

`settings.scopes` ({channel id: [entry, ...]}) gives the configured scopes and `/flywheel scope set |
clear` overrides them per channel (kept in the store's kv table, so they survive restarts);
`settings.private_sources` lists entries that are answered only in DMs. Retrieval filters by source
(the file name in `chunks.source`, see storage/knowledge.py), so entries are resolved to concrete
file names at answer time, from the documents table: a folder scope follows later ingests.

    sources = channel_sources(bot.settings, bot.store, channel)   # None = no filter
    agent.answer(question, ..., sources=sources)

Because the filter keys on file names, a private file's name is withheld in channels even when a
public file elsewhere has the same name: privacy wins over recall.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from storage.config import Settings
from storage.db import Store

OVERRIDES_KEY = "channel_scopes"  # kv: {channel: [entry, ...] | null}; null = cleared (unscoped)
# Retrieval treats an empty source list as "no filter", so a scope that matches nothing is sent as a
# name no document can have: the answer is then "the documents don't say", never an unscoped answer.
NO_SOURCES = ["\x00no documents in this channel's scope"]


def is_direct_message(channel: str) -> bool:
    """Slack's DM channel ids start with D; private channels and group DMs (C…/G…) are not DMs."""
    return channel.startswith("D")


def parse_entries(text: str) -> list[str]:
    """`a, b c` → ["a", "b", "c"]: entries are separated by commas or whitespace (Slack users type both)."""
    return [part for part in text.replace(",", " ").split() if part]


def entry_matches(entry: str, path: str, name: str) -> bool:
    """Does `entry` (absolute path, relative run of folder names, or file name) cover this document?"""
    entry = entry.strip().rstrip("/")
    if not entry:
        return False
    if entry == name:
        return True
    doc = PurePath(path)
    wanted = Path(entry).expanduser()
    if wanted.is_absolute():
        wanted = wanted.resolve()  # documents store resolved paths; compare like with like
        return doc == wanted or wanted in doc.parents
    parts, doc_parts = wanted.parts, doc.parts
    return any(doc_parts[i:i + len(parts)] == parts for i in range(len(doc_parts) - len(parts) + 1))


def resolve(entries: list[str], documents: list[dict[str, Any]]) -> set[str]:
    """The source names (file names) of the documents any entry covers."""
    return {doc["name"] for doc in documents if any(entry_matches(e, doc["path"], doc["name"]) for e in entries)}


def _documents(store: Store) -> list[dict[str, Any]]:
    # Failed documents have no chunks; 'stale' ones still serve their previous chunks.
    return store.query("SELECT path, name FROM documents WHERE status != 'failed'")


def _overrides(store: Store) -> dict[str, list[str] | None]:
    raw = store.get_kv(OVERRIDES_KEY)
    return json.loads(raw) if raw else {}


@dataclass
class Scope:
    """A channel's scope as configured: its entries (None = unscoped) and where they come from."""

    channel: str
    entries: list[str] | None
    origin: str  # "config" | "slack" (set with /flywheel scope) | "none"


def channel_scope(settings: Settings, store: Store, channel: str) -> Scope:
    overrides = _overrides(store)
    if channel in overrides:
        entries = overrides[channel]
        return Scope(channel, entries, "slack" if entries is not None else "none")
    if channel in settings.scopes:
        return Scope(channel, list(settings.scopes[channel]), "config")
    return Scope(channel, None, "none")


def set_channel_scope(store: Store, channel: str, entries: list[str] | None, actor: str) -> None:
    """Override the configured scope of `channel` (None = unscoped, even if the config scopes it)."""
    with store.transaction():  # read-modify-write of one kv row: two admins at once must not lose an update
        overrides = _overrides(store)
        overrides[channel] = entries
        store.set_kv(OVERRIDES_KEY, json.dumps(overrides, sort_keys=True))
    store.audit(actor, "scope", {"channel": channel, "entries": entries})


def private_entries(settings: Settings) -> list[str]:
    return [e.strip() for e in settings.private_sources.split(",") if e.strip()]


def channel_sources(settings: Settings, store: Store, channel: str) -> list[str] | None:
    """The `sources=` for an answer in `channel`: None (no filter) or the allowed file names.

    DMs see everything, private documents included. A channel sees its scope (or everything when
    unscoped) minus the private documents."""
    if is_direct_message(channel):
        return None
    scope = channel_scope(settings, store, channel)
    private = private_entries(settings)
    if scope.entries is None and not private:
        return None
    documents = _documents(store)
    allowed = resolve(scope.entries, documents) if scope.entries is not None else {d["name"] for d in documents}
    allowed -= resolve(private, documents)
    return sorted(allowed) or list(NO_SOURCES)


def describe(settings: Settings, store: Store, channel: str) -> str:
    """What `/flywheel scope show` says about `channel`."""
    if is_direct_message(channel):
        return "This is a DM: it sees every document, private ones included. Scopes apply to channels."
    scope = channel_scope(settings, store, channel)
    sources = channel_sources(settings, store, channel)
    private = private_entries(settings)
    if scope.entries is None:
        head = "This channel is not scoped: it sees every document"
        head += " except the private ones." if private else "."
    else:
        origin = "set with `/flywheel scope`" if scope.origin == "slack" else "from the configuration"
        head = f"This channel's scope ({origin}): " + ", ".join(f"`{e}`" for e in scope.entries) + "."
    if sources is None:
        return head
    names = [] if sources == NO_SOURCES else sources
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return head + f"\nDocuments answered here ({len(names)}): " + (shown or "none")
