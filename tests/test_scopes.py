"""Knowledge scopes per channel and private documents (bot/scopes.py), unit and end to end through
the real Bolt and slack_sdk clients against the fake Slack.

    pytest -q tests/test_scopes.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import scopes
from bot.app import FlywheelBot
from storage.config import Settings
from storage.db import Store
from tests.fakeslack import FakeSlack
from tests.slackbot import ADMIN, response_texts

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_slack_env")]

CANARY = "How much traffic does a canary get, and for how long?"  # answered by deploys.md
SECRET = "What is the Zephyr launch code word?"
SECRET_DOC = "zephyr.md"
ENG_DOC = "pager-rotation.md"


@pytest.fixture
def extra_docs(tmp_path: Path) -> dict[str, Path]:
    """Two more folders next to the handbook: an engineering one and a private one."""
    eng, private = tmp_path / "docs" / "eng", tmp_path / "docs" / "private"
    eng.mkdir(parents=True)
    private.mkdir(parents=True)
    (eng / ENG_DOC).write_text("# Pager rotation\n\nThe pager rotates every Monday at 10:00 between the four "
                               "platform engineers. Canary alerts page the platform engineer on duty.\n")
    (private / SECRET_DOC).write_text("# Project Zephyr\n\nThe Zephyr launch code word is bluebird. The Zephyr "
                                      "launch is planned for March 3 and only the founders know it.\n")
    return {"eng": eng, "private": private}


# --- resolution (no Slack) ---------------------------------------------------------------------------
def test_entries_match_absolute_folders_relative_folder_runs_and_file_names(tmp_path: Path) -> None:
    doc = str((tmp_path / "team" / "eng" / "runbooks" / "deploys.md").resolve())
    assert scopes.entry_matches(str(tmp_path / "team" / "eng"), doc, "deploys.md")
    assert scopes.entry_matches(str(tmp_path / "team" / "eng") + "/", doc, "deploys.md")
    assert scopes.entry_matches("runbooks", doc, "deploys.md")
    assert scopes.entry_matches("eng/runbooks", doc, "deploys.md")
    assert scopes.entry_matches("deploys.md", doc, "deploys.md")
    assert not scopes.entry_matches("eng/deploys", doc, "deploys.md")  # a run of whole names, not a prefix
    assert not scopes.entry_matches("books", doc, "deploys.md")
    assert not scopes.entry_matches(str(tmp_path / "team" / "hr"), doc, "deploys.md")
    assert not scopes.entry_matches("", doc, "deploys.md")
    assert scopes.parse_entries("eng/runbooks, deploys.md  hr") == ["eng/runbooks", "deploys.md", "hr"]


def _add_document(store: Store, path: str) -> None:
    store.insert("documents", {"id": path, "path": path, "name": Path(path).name, "status": "ok",
                                  "chunks": 1, "updated_at": "2026-01-01"})


def test_channel_sources_apply_scope_private_and_overrides(tmp_path: Path, store: Store) -> None:
    for path in ("/d/eng/a.md", "/d/eng/b.md", "/d/hr/c.md", "/d/private/secret.md", "/d/hr/secret.md"):
        _add_document(store, path)
    settings = Settings(home=tmp_path, scopes={"CENG": ["eng"], "CNONE": ["nothing-here"]},
                        private_sources="/d/private")
    assert scopes.channel_sources(settings, store, "CENG") == ["a.md", "b.md"]
    # Unscoped channel: everything but the private names (a public file sharing a private name is hidden too).
    assert scopes.channel_sources(settings, store, "COTHER") == ["a.md", "b.md", "c.md"]
    assert scopes.channel_sources(settings, store, "D0001") is None  # DMs: everything, private included
    assert scopes.channel_sources(settings, store, "CNONE") == scopes.NO_SOURCES  # never "no filter"
    assert scopes.channel_sources(Settings(home=tmp_path), store, "COTHER") is None

    scopes.set_channel_scope(store, "COTHER", ["hr"], actor=ADMIN)
    assert scopes.channel_sources(settings, store, "COTHER") == ["c.md"]
    scopes.set_channel_scope(store, "CENG", None, actor=ADMIN)  # cleared: unscoped despite the config
    assert scopes.channel_scope(settings, store, "CENG").origin == "none"
    assert scopes.channel_sources(settings, store, "CENG") == ["a.md", "b.md", "c.md"]
    audit = store.query("SELECT detail FROM audit_log WHERE action = 'scope' ORDER BY id")
    assert [json.loads(r["detail"])["entries"] for r in audit] == [["hr"], None]


# --- through Slack ----------------------------------------------------------------------------------
def _interaction(bot: FlywheelBot, fake: FakeSlack, question: str, channel: str) -> dict[str, Any]:
    row = fake.wait_for(lambda: next(iter(bot.store.query(
        "SELECT * FROM interactions WHERE question = ? AND channel = ? ORDER BY created_at DESC",
        (question, channel))), None), timeout=90)
    return {**row, "citations": json.loads(row["citations"] or "[]"), "retrieved": json.loads(row["retrieved"] or "[]")}


def _cited(row: dict[str, Any]) -> set[str]:
    return {c["source"] for c in row["citations"]}


def _retrieved(row: dict[str, Any]) -> set[str]:
    return {r["source"] for r in row["retrieved"]}


def test_scoped_channel_never_cites_another_folder_and_private_docs_stay_in_dms(
        fake: FakeSlack, make_bot: Callable[..., FlywheelBot], extra_docs: dict[str, Path]) -> None:
    bot = make_bot(scopes={"C0002": [str(extra_docs["eng"])]}, private_sources="private")
    report = bot.agent.kb.ingest([extra_docs["eng"], extra_docs["private"]])
    assert not report.failed

    # Unscoped channel: the canary question cites the handbook's deploys page.
    fake.mention("U1", "C0001", CANARY)
    assert "deploys.md" in _cited(_interaction(bot, fake, CANARY, "C0001"))

    # Channel scoped to the eng folder: nothing outside it is even retrieved, let alone cited.
    fake.mention("U1", "C0002", CANARY)
    scoped = _interaction(bot, fake, CANARY, "C0002")
    assert _retrieved(scoped) and _retrieved(scoped) <= {ENG_DOC}
    assert _cited(scoped) <= {ENG_DOC}

    # The private document: never in a channel, cited in a DM.
    fake.mention("U1", "C0001", SECRET)
    public = _interaction(bot, fake, SECRET, "C0001")
    assert SECRET_DOC not in _retrieved(public) | _cited(public)
    assert "bluebird" not in public["answer"]
    fake.dm("U1", SECRET)
    private = _interaction(bot, fake, SECRET, "D0001")
    assert SECRET_DOC in _cited(private)
    assert "bluebird" in private["answer"]


def test_scope_command_shows_sets_and_clears_for_admins_only(
        fake: FakeSlack, make_bot: Callable[..., FlywheelBot], extra_docs: dict[str, Path]) -> None:
    bot = make_bot(private_sources=SECRET_DOC)
    bot.agent.kb.ingest([extra_docs["eng"], extra_docs["private"]])

    fake.command("U1", "/flywheel", "scope set eng", channel="C0003")
    fake.wait_for(lambda: any("only Flywheel admins" in t for t in response_texts(fake)))
    assert scopes.channel_scope(bot.settings, bot.store, "C0003").entries is None

    fake.command(ADMIN, "/flywheel", "scope show", channel="C0003")
    shown = fake.wait_for(lambda: next(t for t in response_texts(fake) if "not scoped" in t))
    assert "except the private ones" in shown

    fake.command(ADMIN, "/flywheel", "scope set no-such-folder", channel="C0003")
    fake.wait_for(lambda: any("matches no ingested document" in t for t in response_texts(fake)))
    assert scopes.channel_scope(bot.settings, bot.store, "C0003").entries is None

    fake.command(ADMIN, "/flywheel", "scope set deploys.md, eng", channel="C0003")
    done = fake.wait_for(lambda: next(t for t in response_texts(fake) if t.startswith("Scope set")))
    assert "`deploys.md`, `eng`" in done and "Documents answered here (2)" in done
    assert bot.sources_for("C0003") == ["deploys.md", ENG_DOC]

    fake.mention("U1", "C0003", CANARY)
    row = _interaction(bot, fake, CANARY, "C0003")
    assert _retrieved(row) <= {"deploys.md", ENG_DOC} and "deploys.md" in _cited(row)

    fake.command(ADMIN, "/flywheel", "scope clear", channel="C0003")
    fake.wait_for(lambda: any(t.startswith("Scope cleared") for t in response_texts(fake)))
    assert SECRET_DOC not in (bot.sources_for("C0003") or [])
    assert "onboarding.md" in (bot.sources_for("C0003") or [])
    assert bot.sources_for("D0001") is None
    actions = [r["action"] for r in bot.store.query("SELECT action FROM audit_log WHERE actor = ?", (ADMIN,))]
    assert actions.count("scope") == 2 and "slash:scope" in actions
