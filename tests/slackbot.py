"""A Flywheel bot on the fake Slack, for the Slack tests: the real Bolt app,
SocketModeHandler and slack_sdk clients, the real Agent (tiny random model) over a copy of the
ingested sample handbook. The fixtures built on it (`fake`, `make_bot`, `bot`, `no_slack_env`) are in
tests/conftest.py; the helpers here are for the Slack test modules to import."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.graph import Agent
from bot.app import FlywheelBot, build_app
from storage.config import Settings
from tests.fakeslack import FakeSlack

ADMIN = "UADMIN"


@contextmanager
def bot_factory(handbook_home: Path, tiny_model_dir: Path, fake: FakeSlack,
                tmp_path: Path) -> Iterator[Callable[..., FlywheelBot]]:
    """`make(connect=True, http=False, **settings)` → a bot on a fresh copy of the handbook home."""
    bots: list[FlywheelBot] = []

    def make(connect: bool = True, http: bool = False, **overrides: Any) -> FlywheelBot:
        home = tmp_path / f"home{len(bots)}"
        shutil.copytree(handbook_home, home)
        values: dict[str, Any] = dict(
            home=home, model=str(tiny_model_dir), max_new_tokens=16, stream_interval=0.05, admin_users=ADMIN,
            slack_api_url=fake.api_url, SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test",
        )
        values.update(overrides)
        settings = Settings(**values)
        bot = build_app(settings, Agent(settings), http=http)
        bots.append(bot)
        if connect:
            # A short ping interval makes the builtin client notice closed sockets quickly.
            bot.run_socket_mode(block=False, ping_interval=0.5)
            fake.wait_for(lambda: fake.connected, timeout=10)
        return bot

    try:
        yield make
    finally:
        for bot in bots:
            bot.close()
            bot.store.close()


def bot_replies(fake: FakeSlack, channel: str, thread_ts: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages(channel, thread_ts, include_parent=False) if m["bot_id"]]


def response_texts(fake: FakeSlack) -> list[str]:
    """What respond() sent back for slash commands."""
    return [r.get("text") or "" for r in fake.responses()]
