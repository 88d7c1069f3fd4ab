"""Files shared with the bot in Slack (bot/files.py): an admin's file is downloaded with the bot token
and ingested like `flywheel ingest`, with a threaded reply saying what went in or why not; through the
real Bolt and slack_sdk clients against the fake Slack.

    pytest -q tests/test_slack_files.py
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import BUSY, FlywheelBot
from bot.files import REFUSED, safe_name
from tests.fakeslack import FakeSlack
from tests.slackbot import ADMIN, bot_replies

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_slack_env")]

RUNBOOK = b"# Failover runbook\n\nTo fail over the database, promote the standby with `pg_ctl promote` and " \
          b"repoint the service DNS record. The failover drill happens every quarter.\n"


@pytest.fixture
def bot(make_bot: Callable[..., FlywheelBot]) -> FlywheelBot:
    return make_bot(slack_file_max_mb=1)


def final_reply(fake: FakeSlack, channel: str, thread: str, timeout: float = 90) -> str:
    """The bot's reply in the thread once it is more than "Reading …" (it is edited into the result)."""
    def done() -> str | None:
        texts = [m["text"] or "" for m in bot_replies(fake, channel, thread)]
        return next((t for t in texts if not t.startswith("Reading ")), None)
    return fake.wait_for(done, timeout=timeout)


def share(fake: FakeSlack, user: str, channel: str, name: str, data: bytes, **kwargs: Any) -> str:
    """Share a file; returns the thread the bot should answer in."""
    return fake.share_file(user, channel, name, data, **kwargs)["payload"]["event"]["ts"]


def downloads(fake: FakeSlack) -> list[dict[str, Any]]:
    return fake.calls("files-pri")


def one_page_pdf(text: str) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 72), text, fontsize=11)
    data = doc.tobytes()
    doc.close()
    return data


def test_admin_dm_file_is_ingested_and_can_be_cited(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread = share(fake, ADMIN, "D0001", "failover.md", RUNBOOK, text="here's the new runbook")
    reply = final_reply(fake, "D0001", thread)
    assert reply.startswith("✓ `failover.md` added: ") and "chunks" in reply
    assert [c["token"] for c in downloads(fake)] == ["xoxb-test"]  # downloaded with the bot token
    doc = bot.store.query("SELECT * FROM documents WHERE name = 'failover.md'")[0]
    assert doc["status"] == "ok" and doc["chunks"] >= 1
    assert Path(doc["path"]) == (bot.settings.slack_files_dir / "failover.md").resolve()
    audit = bot.store.query("SELECT * FROM audit_log WHERE action = 'slack:file'")
    assert audit and audit[0]["actor"] == ADMIN
    # The same path as any other document: answers cite it.
    result = bot.agent.answer("How do we fail over the database?", record=False)
    assert any(c["source"] == "failover.md" for c in result.citations)

    # Shared again, changed: the same document is updated, not duplicated.
    thread = share(fake, ADMIN, "D0001", "failover.md", RUNBOOK + b"\nThe drill lasts two hours.\n")
    assert final_reply(fake, "D0001", thread).startswith("✓ `failover.md` updated: ")
    assert bot.store.scalar("SELECT COUNT(*) FROM documents WHERE name = 'failover.md'") == 1


def test_mention_with_a_pdf_attachment_in_a_channel(fake: FakeSlack, bot: FlywheelBot) -> None:
    pdf = one_page_pdf("The parking garage opens at 6 am and closes at midnight.")
    thread = share(fake, ADMIN, "C0001", "parking.pdf", pdf, text="please add this", mention=True)
    reply = final_reply(fake, "C0001", thread)
    assert reply.startswith("✓ `parking.pdf` added: ") and "from 1 page" in reply
    assert bot.store.scalar("SELECT pages FROM documents WHERE name = 'parking.pdf'") == 1
    # The mention was not also treated as a question.
    assert not bot.store.query("SELECT id FROM interactions")


def test_file_info_stub_is_completed_with_files_info(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread = share(fake, ADMIN, "D0001", "notes.txt", b"The cafeteria serves soup on Fridays.\n", stub=True)
    assert final_reply(fake, "D0001", thread).startswith("✓ `notes.txt` added")
    assert fake.calls("files.info")


def test_unsupported_too_big_and_broken_files_say_why(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread = share(fake, ADMIN, "D0001", "diagram.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    reply = final_reply(fake, "D0001", thread)
    assert reply.startswith("✗ `diagram.png` was not added: I can't read .png files") and ".pdf" in reply

    thread = share(fake, ADMIN, "D0001", "huge.md", b"# Big\n\nsmall really\n", size=5 * 1024 * 1024)
    assert "5.0 MB, over the 1 MB limit" in final_reply(fake, "D0001", thread)

    thread = share(fake, ADMIN, "D0001", "broken.pdf", b"%PDF-1.7\nthis is not really a pdf\n")
    assert final_reply(fake, "D0001", thread).startswith("✗ `broken.pdf` could not be read: ")
    assert len(downloads(fake)) == 1  # only the broken PDF was downloaded: the checks came first
    assert not (bot.settings.slack_files_dir / "broken.pdf").exists()  # nothing half-ingested left behind
    assert not bot.store.scalar("SELECT COUNT(*) FROM documents WHERE name IN ('diagram.png', 'huge.md')")


def test_non_admin_gets_a_polite_refusal_and_nothing_is_downloaded(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread = share(fake, "U1", "D0001", "failover.md", RUNBOOK)
    assert fake.wait_for(lambda: [m["text"] for m in bot_replies(fake, "D0001", thread)]) == [REFUSED]
    thread = share(fake, "U1", "C0001", "failover.md", RUNBOOK, mention=True)
    assert fake.wait_for(lambda: [m["text"] for m in bot_replies(fake, "C0001", thread)]) == [REFUSED]
    assert not downloads(fake)
    assert not bot.store.scalar("SELECT COUNT(*) FROM documents WHERE name = 'failover.md'")
    assert REFUSED != BUSY


def test_token_goes_only_to_slack_and_names_are_made_safe(fake: FakeSlack, bot: FlywheelBot) -> None:
    from bot.files import FileRejected, download

    with pytest.raises(FileRejected, match="not on Slack"):
        download(bot, "https://evil.example.com/steal", bot.settings.home / "x.md", 1024)
    with pytest.raises(FileRejected, match="not on Slack"):
        download(bot, "http://files.slack.com/plain-http", bot.settings.home / "x.md", 1024)
    assert not downloads(fake)
    assert safe_name({"name": "../../etc/passwd.md"}) == "passwd.md"
    assert safe_name({"name": ".bashrc"}) == "bashrc"
    assert safe_name({"name": "Untitled", "filetype": "markdown"}) == "Untitled.md"
    assert safe_name({"name": "a<b>|c.txt"}) == "a_b_c.txt"


def test_manifest_asks_for_files_read() -> None:
    manifest = yaml.safe_load((Path(__file__).parents[1] / "bot" / "manifest.yml").read_text())
    assert "files:read" in manifest["oauth_config"]["scopes"]["bot"]
