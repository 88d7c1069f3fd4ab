"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline, and a
developer's own Flywheel/Slack/Anthropic environment is cleared so it cannot leak into a test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in list(os.environ):
    if _name.startswith(("SLACK_", "FLYWHEEL_")) or _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                                                                "OPENAI_API_KEY"):
        del os.environ[_name]
# Settings also read `$FLYWHEEL_HOME/config.toml` (default ~/.flywheel): point it at an empty dir.
os.environ["FLYWHEEL_HOME"] = tempfile.mkdtemp(prefix="flywheel-test-home-")
atexit.register(shutil.rmtree, os.environ["FLYWHEEL_HOME"], ignore_errors=True)  # don't leave one per run

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

from storage.config import Settings, get_settings  # noqa: E402
from storage.db import Store  # noqa: E402

if TYPE_CHECKING:
    from bot.app import FlywheelBot
    from tests.fakeslack import FakeSlack

get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with the real SmolLM2 tokenizer: garbage output, the real code paths."""
    from agent.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-smollm"))


@pytest.fixture(scope="session")
def handbook_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FLYWHEEL_HOME with the sample handbook ingested once per session; tests copy it into their
    own home (`shutil.copytree(handbook_home, settings.home, dirs_exist_ok=True)`)."""
    from storage.knowledge import KnowledgeBase
    from storage.samples import sample_handbook

    home = tmp_path_factory.mktemp("handbook-home")
    kb = KnowledgeBase(Settings(home=home))
    report = kb.ingest([sample_handbook()])
    assert not report.failed, report.failed
    kb.store.close()
    return home


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings rooted in a fresh temporary home, generating with the tiny model."""
    s = Settings(home=tmp_path / "home", model=str(tiny_model_dir), max_new_tokens=16)
    s.ensure_dirs()
    return s


@pytest.fixture
def kb_store(handbook_home, settings):
    """The ingested handbook in this test's home; the store opens after the copy, not before."""
    from storage.knowledge import KnowledgeBase

    shutil.copytree(handbook_home, settings.home, dirs_exist_ok=True)
    store = Store(settings.db_path)
    yield KnowledgeBase(settings, store), store
    store.close()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    db = Store(settings.db_path)
    yield db
    db.close()


# --- the Slack bot on the fake Slack (tests/fakeslack.py, tests/slackbot.py) ------------------------
@pytest.fixture
def no_slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLACK_* variable during the test (SLACK_CLIENT_ID/SECRET would silently switch Bolt into OAuth
    mode). The Slack test modules apply it to every test: `pytest.mark.usefixtures("no_slack_env")`."""
    for name in list(os.environ):
        if name.startswith("SLACK_"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    """A running fake Slack whose bot is UBOT (bot id BBOT)."""
    from tests.fakeslack import FakeSlack

    with FakeSlack(bot_user_id="UBOT", bot_id="BBOT") as running:
        yield running


@pytest.fixture
def make_bot(handbook_home: Path, tiny_model_dir: Path, fake: FakeSlack,
             tmp_path: Path) -> Iterator[Callable[..., FlywheelBot]]:
    """`make(connect=True, http=False, **settings)`: a bot on a fresh copy of the ingested handbook,
    connected to `fake` over Socket Mode (tests/slackbot.py's `bot_factory`)."""
    from tests.slackbot import bot_factory

    with bot_factory(handbook_home, tiny_model_dir, fake, tmp_path) as make:
        yield make


@pytest.fixture
def bot(make_bot: Callable[..., FlywheelBot]) -> FlywheelBot:
    """A bot with the default Slack test settings, connected to `fake`."""
    return make_bot()
