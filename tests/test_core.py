"""Unit tests: settings, migrations, the feedback upsert, reciprocal rank fusion, grounding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.grounding import attribute_citations, extractive_answer
from agent.retrieval import reciprocal_rank_fusion
from storage.config import Settings
from storage.db import MIGRATIONS, Store, connect, migrate, schema_version


# --- settings ---------------------------------------------------------------------------------
def test_settings_env_overrides_toml_and_defaults(tmp_path, monkeypatch):
    config = tmp_path / "flywheel.toml"
    config.write_text('top_k = 9\nchunk_tokens = 150\nbackend = "openai"\n')
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    monkeypatch.setenv("FLYWHEEL_TOP_K", "7")
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    settings = Settings()
    assert settings.top_k == 7  # env beats the file
    assert settings.chunk_tokens == 150  # file beats the default
    assert settings.backend == "openai"
    assert settings.home == tmp_path / "home"
    assert settings.db_path == tmp_path / "home" / "flywheel.db"


def test_settings_mask_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    masked = Settings(home=tmp_path).masked()
    assert masked["anthropic_api_key"] == "***"
    assert masked["slack_bot_token"] == "***"
    assert masked["slack_app_token"] is None
    assert "very-secret" not in repr(masked)


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        Settings()


def test_invalid_setting_is_rejected(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_BACKEND", "gpt-local")
    with pytest.raises(Exception, match="backend"):
        Settings(home=tmp_path)


# --- migrations -------------------------------------------------------------------------------
def test_migrations_apply_once_and_are_idempotent(tmp_path):
    db = connect(tmp_path / "a.db")
    assert schema_version(db) == len(MIGRATIONS)
    assert migrate(db) == len(MIGRATIONS)  # a second run is a no-op
    tables = set(db.table_names())
    assert {"documents", "chunks", "interactions", "feedback", "qa_pairs", "preference_pairs",
            "training_runs", "adapters", "audit_log"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    db = connect(tmp_path / "b.db")
    monkeypatch.setattr("storage.db.MIGRATIONS", MIGRATIONS + ["CREATE TABLE extra (x); SELECT broken syntax here;"])
    with pytest.raises(Exception):
        migrate(db)
    assert schema_version(db) == len(MIGRATIONS)
    assert "extra" not in db.table_names()


# --- feedback ---------------------------------------------------------------------------------
def test_one_vote_per_user_per_answer(tmp_path):
    store = Store(tmp_path / "c.db")
    iid = store.record_interaction(surface="cli", question="q", answer="a", grounded=True, citations=[], retrieved=[])
    store.set_vote(iid, "U1", 1, "reaction")
    store.set_vote(iid, "U1", 1, "reaction")  # duplicate: idempotent
    store.set_vote(iid, "U2", -1, "button", comment="wrong page")
    assert store.feedback_counts() == {"up": 1, "down": 1}
    store.set_vote(iid, "U1", -1, "button")  # changed
    assert store.feedback_counts() == {"up": 0, "down": 2}
    store.set_vote(iid, "U2", 0, "button")  # removed; the comment is kept
    assert store.feedback_counts() == {"up": 0, "down": 1}
    row = store.query("SELECT * FROM feedback WHERE user_id = 'U2'")[0]
    assert row["comment"] == "wrong page" and row["vote"] == 0


# --- retrieval fusion ---------------------------------------------------------------------------
def test_rrf_rewards_agreement_and_breaks_ties_stably():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], k=60)
    ids = [i for i, _ in fused]
    assert ids[:2] == ["b", "a"]  # b is 2nd+1st, a is 1st+3rd
    assert set(ids) == {"a", "b", "c", "d"}
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert reciprocal_rank_fusion([[], []]) == []


# --- grounding ----------------------------------------------------------------------------------
@dataclass
class P:
    text: str
    source: str = "deploys.md"
    page: int | None = None
    heading: str | None = None


PASSAGES = [
    P("Canary deploys send 5% of traffic to the new version for 30 minutes before the full rollout."),
    P("Expenses above $500 need manager approval in Ledgerly.", source="expenses.md"),
]


def test_supported_answer_gets_its_citation_added():
    result = attribute_citations("Canary deploys send 5% of traffic to the new version for 30 minutes.", PASSAGES)
    assert result.supported and result.cited == [1]
    assert result.answer.endswith("[1].")


def test_invalid_and_wrong_markers_are_dropped():
    result = attribute_citations("Expenses above $500 need manager approval [1][7].", PASSAGES)
    assert result.cited == [2]
    assert "[7]" not in result.answer and "[2]" in result.answer


def test_invented_answer_is_not_supported():
    result = attribute_citations("The office wifi password is hunter2 and changes monthly.", PASSAGES)
    assert not result.supported


def test_invented_number_is_not_supported():
    result = attribute_citations("Canary deploys send 50% of traffic to the new version for 30 minutes.", PASSAGES)
    assert not result.supported
    assert attribute_citations("Above $500 expenses need manager approval in Ledgerly.", PASSAGES).supported


def test_extractive_answer_quotes_best_sentence():
    answer, cited = extractive_answer("what share of traffic goes to a canary?", PASSAGES)
    assert "5%" in answer and cited == [1]
    assert extractive_answer("zebra giraffe", PASSAGES) is None
    steps = [P("3. Canary. The canary takes 5% of traffic for 30 minutes. 4. Promote with shipit promote.")]
    answer, _ = extractive_answer("how much traffic does the canary take", steps, max_sentences=1)
    assert answer.endswith("30 minutes.” [1]")
