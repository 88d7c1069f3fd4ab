"""Concurrent ingest + retrain + answering on one Store loses nothing.

The bot shares one SQLite connection between Slack workers, Slack-side ingests and the flywheel cycle; every
write goes through `Store.transaction()` (the store lock + BEGIN IMMEDIATE). Here threads do all of that at
once — ingest new documents, run the cycle's database work (training runs, distillation, adapter promotion,
marking pairs trained), answer questions with the Agent (tiny model), record interactions and votes — and
afterwards every document, chunk, vector, interaction, vote and pair is there. A write that bypassed the lock
would land inside another thread's transaction: "cannot start a transaction within a transaction", a
statement rolled back with someone else's, or a lost row.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from storage.db import new_id, now
from storage.samples import sample_questions

DOCS = 5
RECORDS = 150  # interactions recorded (and voted on) directly, as fast as possible: the contention


def _run(workers: dict[str, Callable[[], None]], timeout: float = 240) -> None:
    """Start every worker at once; re-raise the first failure (a thread's exception is otherwise lost)."""
    errors: list[tuple[str, BaseException]] = []
    start = threading.Barrier(len(workers))

    def wrap(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            start.wait()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append((name, exc))
        return body

    threads = [threading.Thread(target=wrap(n, f), name=n, daemon=True) for n, f in workers.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "a worker hung"
    if errors:
        name, exc = errors[0]
        raise AssertionError(f"worker {name} failed: {exc!r}") from exc


def test_concurrent_ingest_retrain_and_answering_lose_nothing(kb_store, settings, tmp_path) -> None:
    from agent.graph import Agent
    from training.distill import distill
    from training.teachers import load_teacher

    kb, store = kb_store
    agent = Agent(settings, store, kb)
    docs = tmp_path / "new-docs"
    docs.mkdir()
    answered: queue.Queue[str | None] = queue.Queue()
    asked: list[str] = []
    recorded: list[str] = []
    votes: dict[tuple[str, str], int] = {}
    runs: list[str] = []
    stored_pairs: list[int] = []

    def ingest() -> None:
        for i in range(DOCS):
            path = docs / f"procedure-{i}.md"
            path.write_text(f"# Procedure {i}\n\nStep {i} of the quarterly audit: export the ledger-{i} file and "
                            f"sign it.\n\n## Owners\n\nTeam {i} owns the ledger-{i} export.\n")
            report = kb.ingest([path])
            assert not report.failed, report.failed

    def answer() -> None:
        for item in sample_questions()[:3]:
            result = agent.answer(item["question"], surface="slack", user_id="U-ask", channel="C1")
            assert result.interaction_id
            asked.append(result.interaction_id)
            answered.put(result.interaction_id)
        answered.put(None)

    def vote_on_answers() -> None:
        while (interaction := answered.get(timeout=200)) is not None:
            for user, vote in (("U1", 1), ("U2", -1), ("U1", -1)):  # U1 changes their mind: the last vote counts
                store.set_vote(interaction, user, vote, "button")
                votes[(interaction, user)] = vote

    def record_and_vote() -> None:
        for i in range(RECORDS):
            interaction = store.record_interaction(surface="slack", question=f"q{i}", answer=f"a{i}", grounded=True,
                                                   citations=[], retrieved=[], channel="C2", user_id="U9")
            store.attach_message(interaction, "C2", f"1700000000.{i:06d}")
            assert store.claim_event(f"Ev{i}")
            store.set_vote(interaction, "U3", 1 if i % 2 else -1, "reaction")
            votes[(interaction, "U3")] = 1 if i % 2 else -1
            recorded.append(interaction)

    def retrain() -> None:
        """The cycle's database work, twice: run rows, distillation, adapter registry, pairs marked trained."""
        for cycle in range(2):
            run_id = new_id()
            store.start_training_run(run_id, "test")
            runs.append(run_id)
            for stage in ("distill", "dataset", "train", "evaluate"):
                store.update_training_run(run_id, stage=stage)
                store.set_kv("cycle_progress", f'{{"run_id": "{run_id}", "stage": "{stage}"}}')
            report = distill(settings, store, load_teacher(settings, "offline"), max_pairs=15)
            stored_pairs.append(report.kept)
            version = f"v{cycle + 1:04d}"
            store.add_adapter({"version": version, "path": f"/adapters/{version}", "base_model": "tiny",
                               "status": "candidate", "run_id": run_id, "created_at": now()})
            store.update_adapter(version, metrics={"delta": 0.1})
            store.promote_adapter(version)
            pair_ids = [r["id"] for r in store.query("SELECT id FROM qa_pairs WHERE trained_at IS NULL")]
            store.mark_qa_pairs_trained(pair_ids, now())
            store.update_training_run(run_id, status="succeeded", finished_at=now(), adapter_version=version,
                                      counts={"pairs": report.kept})
            store.set_kv("cycle_progress", None)

    started = time.monotonic()
    _run({"ingest": ingest, "answer": answer, "vote": vote_on_answers, "record": record_and_vote,
          "retrain": retrain})
    assert time.monotonic() - started < 200

    # Every document and chunk, in SQLite, Chroma and BM25.
    names = {r["name"]: r for r in store.query("SELECT name, status, chunks FROM documents")}
    for i in range(DOCS):
        assert names[f"procedure-{i}.md"]["status"] == "ok" and names[f"procedure-{i}.md"]["chunks"] > 0
    chunk_ids = {r["id"] for r in store.query("SELECT id FROM chunks")}
    assert len(chunk_ids) == store.scalar("SELECT SUM(chunks) FROM documents WHERE status = 'ok'")
    assert chunk_ids <= kb.vectors.ids()
    assert {cid for cid, _ in kb.lexical.query("ledger audit export procedure owners", 10_000)} >= {
        r["id"] for r in store.query("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
                                     "WHERE d.name LIKE 'procedure-%'")}

    # Every interaction and every vote (the last one per user), the Slack bookkeeping too.
    assert len(asked) == 3 and len(recorded) == RECORDS
    for interaction in asked + recorded:
        assert store.interaction(interaction) is not None, interaction
    for (interaction, user), vote in votes.items():
        assert store.vote_of(interaction, user)["vote"] == vote
    assert store.scalar("SELECT COUNT(*) FROM feedback") == len(votes)
    assert store.scalar("SELECT COUNT(*) FROM slack_events") == RECORDS
    assert store.interaction_by_message("C2", f"1700000000.{RECORDS - 1:06d}")["id"] == recorded[-1]

    # The cycle's rows: both runs finished, the last adapter serves, every distilled pair kept and marked.
    assert [r["status"] for r in store.query("SELECT status FROM training_runs ORDER BY started_at")] == \
        ["succeeded", "succeeded"]
    assert store.promoted_adapter()["version"] == "v0002"
    assert store.scalar("SELECT COUNT(*) FROM qa_pairs") == sum(stored_pairs) > 0
    assert store.scalar("SELECT COUNT(*) FROM qa_pairs WHERE trained_at IS NULL") == 0
    assert store.get_kv("cycle_progress") is None


def test_a_nested_transaction_joins_the_outer_one(store) -> None:
    """A store method called inside `transaction()` commits or rolls back with it, never on its own."""
    try:
        with store.transaction():
            store.set_kv("a", "1")
            store.audit("test", "nested")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert store.get_kv("a") is None and not store.query("SELECT * FROM audit_log WHERE action = 'nested'")
    with store.transaction():
        store.set_kv("a", "2")
        store.set_kv("b", "3")
    assert (store.get_kv("a"), store.get_kv("b")) == ("2", "3")


def test_the_sqlite_handle_is_private(store) -> None:
    """Writes go through the store's methods: there is no public connection to write around the lock."""
    assert not hasattr(store, "db") and not hasattr(store, "lock")
    assert store.execute("UPDATE kv SET value = 'x' WHERE key = 'missing'") == 0
    row: dict[str, Any] = {"key": "k", "value": "v"}
    assert store.insert("kv", row) == 1 and store.get_kv("k") == "v"
