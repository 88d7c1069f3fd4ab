"""The flywheel teaches the retriever (training/retriever.py): training writes a versioned rNNNN and
resumes after a crash, the gate rejects a candidate trained on shuffled pairs and promotes a clearly better
one, promotion re-embeds into a new collection while answers keep coming from the old one, rollback, and a
collection is never searched with another model's vectors.

A tiny sentence-transformers model (a random 2-layer BERT with a WordPiece vocabulary learned from the
sample handbook) is built here, never downloaded; where a test needs a retriever that really ranks, it
is the bundled all-MiniLM-L6-v2 (in the virtualenv, offline)."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from storage.config import Settings
from storage.db import Store
from storage.embeddings import bundled_embedding_model, model_identity
from storage.index import EmbeddingMismatchError, VectorIndex, chroma_client
from storage.knowledge import KnowledgeBase
from storage.samples import sample_handbook, sample_questions
from training.gate import Decision
from training.registry import RegistryError
from training.retriever import random_negative, train_retriever
from training.retriever_gate import compare, compare_retrievers, gate_retriever
from training.retriever_registry import get_retriever, register, start_rollback, start_switch
from training.sft import CRASH_ENV
from training.train import TrainingError

QUESTION = "How do I roll back a deploy?"


def build_tiny_embedder(folder: Path, texts: list[str]) -> Path:
    """A random 2-layer, 64-dim BertModel with a 2,000-word WordPiece vocabulary learned from `texts`,
    wrapped as a SentenceTransformer (mean pooling) and saved to `folder/st`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = folder / "bert"
    raw.mkdir(parents=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=2000, min_frequency=1, show_progress=False)
    wordpiece.save_model(str(raw))
    tokenizer = BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512)
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    model = SentenceTransformer(str(raw), device="cpu")
    model.max_seq_length = 128
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = []
    for path in sorted(Path(sample_handbook()).rglob("*")):
        try:
            texts.append(path.read_text())
        except (UnicodeDecodeError, IsADirectoryError):
            continue  # the PDF: its words still split into known pieces
    texts += [q["question"] for q in sample_questions()]
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"), texts)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: Path) -> Path:
    """The sample handbook ingested with the tiny embedder and distilled by the offline teacher, once."""
    from training.distill import distill
    from training.teachers import load_teacher

    home = tmp_path_factory.mktemp("tiny-retriever-home")
    settings = Settings(home=home, embedding_model=str(tiny_embedder))
    store = Store(settings.db_path)
    kb = KnowledgeBase(settings, store)
    assert not kb.ingest([sample_handbook()]).failed
    assert distill(settings, store, load_teacher(settings, "offline")).kept > 40
    store.close()
    return home


@pytest.fixture
def tiny_settings(settings: Settings, tiny_home: Path, tiny_embedder: Path) -> Settings:
    """This test's own copy of the tiny home; the tiny LM generates (conftest's `settings`)."""
    shutil.copytree(tiny_home, settings.home, dirs_exist_ok=True)
    return settings.model_copy(update={"embedding_model": str(tiny_embedder), "train_threads": 1,
                                       "retriever_batch_size": 16, "gate_min_items": 10})


def _sample_qa() -> list[dict]:
    return [q for q in sample_questions() if q.get("source")]


# --- training ------------------------------------------------------------------------------------
def test_training_writes_r0001_and_a_crashed_run_resumes(tiny_settings, monkeypatch):
    """The first attempt is killed right after its first checkpoint (like the OOM killer): nothing is
    registered. `flywheel train --target retriever` with the same run id resumes from that checkpoint and
    registers r0001 with its config, data counts, losses and model."""
    from typer.testing import CliRunner

    from bot.cli import app
    from storage.config import get_settings

    store = Store(tiny_settings.db_path)
    kb = KnowledgeBase(tiny_settings, store)
    monkeypatch.setenv(CRASH_ENV, "1")
    with pytest.raises(TrainingError, match="rerun with run_id='crashy' to resume"):
        train_retriever(tiny_settings, store, kb, run_id="crashy", max_steps=2)
    folder = tiny_settings.retrievers_dir / "r0001"
    assert (folder / "checkpoints" / "checkpoint-1").is_dir() and not store.query("SELECT * FROM retrievers")
    monkeypatch.delenv(CRASH_ENV)

    env = {"FLYWHEEL_HOME": str(tiny_settings.home), "FLYWHEEL_EMBEDDING_MODEL": tiny_settings.embedding_model,
           "FLYWHEEL_RETRIEVER_BATCH_SIZE": "16", "FLYWHEEL_TRAIN_THREADS": "1"}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["train", "--target", "retriever", "--max-steps", "2", "--run-id", "crashy"],
                                    env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "r0001 registered as candidate" in result.stdout

    record = get_retriever(store, "r0001")
    assert record.status == "candidate" and record.index_state == "none" and record.collection == "chunks-r0001"
    assert record.path == model_identity(str(folder / "model")) and (folder / "model" / "modules.json").is_file()
    for name in ("RUN.json", "train.jsonl", "train.log", "losses.jsonl", "flywheel.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoints").exists()  # removed once the model is saved
    summary = json.loads((folder / "flywheel.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["global_step"] == 2
    assert [row["step"] for row in record.losses] == [1, 2] and all(row["loss"] > 0 for row in record.losses)
    assert record.config["learning_rate"] == tiny_settings.retriever_learning_rate
    assert record.config["batch_size"] == 16 and record.base_model == model_identity(tiny_settings.embedding_model)

    # The rows: train-split questions only, refusal pairs skipped, each chunk row with a negative from
    # another section, mined from the index.
    counts = record.data_counts
    train = store.query("SELECT * FROM qa_pairs WHERE split = 'train'")
    answered = [p for p in train if "couldn't find" not in p["answer"]]
    assert counts["pairs"] == len(answered) < len(train)  # the offline teacher writes some refusal pairs
    assert counts["chunk_rows"] == counts["answer_rows"] == counts["pairs"] and counts["mined_negatives"] > 0
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    heldout = {p["question"] for p in store.query("SELECT question FROM qa_pairs WHERE split = 'heldout'")}
    assert {r["anchor"] for r in rows} == {p["question"] for p in answered} and not heldout & {r["anchor"] for r in rows}
    chunks = {c["id"]: c for c in store.query("SELECT * FROM chunks")}
    for row in (r for r in rows if r["kind"] == "chunk"):
        mine, other = chunks[row["chunk_id"]], chunks[row["negative_id"]]
        assert (mine["source"], mine["heading"]) != (other["source"], other["heading"])
        assert other["text"] in row["negative"] and mine["text"] in row["positive"]


def test_random_negative_comes_from_another_document_else_another_section():
    pair = {"chunk_id": "a1", "chunk_document": "A", "source": "a.md", "heading": "Intro"}
    chunks = [{"id": f"a{i}", "document_id": "A", "source": "a.md", "heading": "Intro"} for i in range(30)]
    rng = random.Random(0)
    assert random_negative(pair, chunks + [{"id": "b1", "document_id": "B", "source": "b.md", "heading": None}],
                           rng)["id"] == "b1"
    other_section = {"id": "a99", "document_id": "A", "source": "a.md", "heading": "Setup"}
    assert random_negative(pair, chunks + [other_section], rng)["id"] == "a99"  # one document: another section
    assert random_negative(pair, chunks, rng)["id"] != "a1"  # one section only: any chunk but its own
    assert random_negative(pair, [c for c in chunks if c["id"] == "a1"], rng) is None


# --- the gate ------------------------------------------------------------------------------------
def _shuffle_train_questions(store: Store, seed: int = 0) -> None:
    """Every train pair gets another pair's question: (question, wrong passage), (question, wrong answer)."""
    rows = store.query("SELECT id, question FROM qa_pairs WHERE split = 'train' ORDER BY id")
    questions = [r["question"] for r in rows]
    random.Random(seed).shuffle(questions)
    with store.transaction() as conn:
        conn.executemany("UPDATE qa_pairs SET question = ? WHERE id = ?",
                         [(question, row["id"]) for row, question in zip(rows, questions)])


def test_gate_rejects_a_candidate_trained_on_shuffled_pairs(kb_store, settings):
    """The bundled MiniLM serves; a candidate fine-tuned from it on shuffled pairs ranks the held-out
    questions worse, and the gate — with enough questions to decide — says no and records why."""
    from training.distill import distill
    from training.teachers import load_teacher

    kb, store = kb_store
    tuned = settings.model_copy(update={"train_threads": 1, "retriever_batch_size": 16, "gate_min_items": 10,
                                        "retriever_learning_rate": 3e-4})
    distill(tuned, store, load_teacher(tuned, "offline"))
    _shuffle_train_questions(store)
    record = train_retriever(tuned, store, kb, max_steps=3)
    decision, reports, _ = gate_retriever(tuned, store, kb, record.version, _sample_qa())

    assert not decision.promote
    assert decision.paired >= tuned.gate_min_items and not decision.forced
    assert not any(reason.startswith("only ") for reason in decision.reasons)  # judged, not refused for size
    candidate, serving = reports["candidate"], reports["serving"]
    assert serving["label"] == "base" and candidate["label"] == record.version
    assert candidate["dense_mrr"] < serving["dense_mrr"]  # the damage is measured ...
    assert any("dense-only hit@5 got worse" in r or "not a significant gain" in r for r in decision.reasons)
    assert get_retriever(store, record.version).status == "rejected"  # ... and applied
    metrics = get_retriever(store, record.version).metrics
    assert metrics["decision"]["promote"] is False and metrics["compared"]["serving"]["hit@1"] == serving["hit@1"]
    assert len(metrics["items"]) == candidate["n"] + candidate["unanswerable"]


def _reports(cand_hits: list[int], ref_hits: list[int], *, cand_hit5: float = 1.0, ref_hit5: float = 1.0,
             cand_dense5: float = 1.0, ref_dense5: float = 1.0, cand_below: float = 0.0,
             ref_below: float = 0.0) -> tuple[dict, dict]:
    def report(label: str, hits: list[int], hit5: float, dense5: float, below: float) -> dict:
        items = [{"id": f"q{i}", "answerable": True, "hit@1": h} for i, h in enumerate(hits)]
        return {"label": label, "n": len(hits), "unanswerable": 0, "hit@1": float(np.mean(hits)), "hit@5": hit5,
                "mrr": 0.5, "dense_hit@1": 0.5, "dense_hit@5": dense5, "dense_mrr": 0.5,
                "below_min_relevance": below, "items": items}

    return (report("r0002", cand_hits, cand_hit5, cand_dense5, cand_below),
            report("base", ref_hits, ref_hit5, ref_dense5, ref_below))


def test_gate_rule_needs_a_significant_hit1_gain_and_no_lower_hit5():
    def decide(*args, **kwargs) -> Decision:
        return compare(*_reports(*args, **kwargs), margin=0.02, tolerance=0.02, min_items=40)

    gain = decide([1] * 40 + [0] * 10, [1] * 30 + [0] * 20)  # 10 better, 0 worse of 50
    assert gain.promote and gain.delta == 0.2 and gain.ci_low > 0 and gain.p_value < 0.05 and gain.reference == "base"
    assert not decide([1] * 33 + [0] * 17, [1] * 30 + [0] * 20).promote  # 3 better: not significant
    lower5 = decide([1] * 40 + [0] * 10, [1] * 30 + [0] * 20, cand_hit5=0.9, ref_hit5=0.92)
    assert not lower5.promote and "hit@5 got lower: 0.920 → 0.900" in lower5.reasons
    dense5 = decide([1] * 40 + [0] * 10, [1] * 30 + [0] * 20, cand_dense5=0.9, ref_dense5=0.95)
    assert not dense5.promote and any("dense-only hit@5 got worse" in r for r in dense5.reasons)
    refuses = decide([1] * 40 + [0] * 10, [1] * 30 + [0] * 20, cand_below=0.1, ref_below=0.0)
    assert not refuses.promote and any("below_min_relevance" in r for r in refuses.reasons)
    small = compare(*_reports([1] * 12 + [0] * 3, [0] * 15), margin=0.02, tolerance=0.02, min_items=40)
    assert not small.promote and small.reasons[0].startswith("only 15 held-out questions; need 40")
    forced = compare(*_reports([1] * 12 + [0] * 3, [0] * 15), margin=0.02, tolerance=0.02, min_items=40, force=True)
    assert forced.promote and forced.forced


# --- promotion, serving, rollback ------------------------------------------------------------------
def test_promotion_reembeds_into_a_new_collection_while_the_old_one_answers_then_rollback(tiny_settings):
    """The tiny random embedder serves; MiniLM, registered as r0001, clearly ranks better and is promoted.
    While its collection is being built (held mid-build here) answers come from the old embedder and
    collection — also for a document ingested meanwhile; then the registry flips and a bot that was
    already running follows without a restart. Rollback serves the kept base collection again; the next
    promotion drops the collection of the rolled-back retriever."""
    from agent.graph import Agent

    # The tiny model's cosines are uncalibrated (near 1 for everything): no min_relevance here; the guard
    # has its own test above.
    settings = tiny_settings.model_copy(update={"min_relevance": 0.0})
    store = Store(settings.db_path)
    kb = KnowledgeBase(settings, store)
    bot = Agent(settings, store, kb)  # the running bot, created before anything is promoted
    first = bot.answer(QUESTION)
    assert first.retriever == "base" and store.interaction(first.interaction_id)["retriever"] == "base"

    register(settings, store, version="r0001", path=bundled_embedding_model(), base_model="bundled")
    decision, reports, vectors = gate_retriever(settings, store, kb, "r0001", _sample_qa())
    assert decision.promote, decision.reasons
    assert reports["candidate"]["hit@1"] > reports["serving"]["hit@1"]
    assert get_retriever(store, "r0001").status == "candidate"  # serving waits for the collection

    inside, release = threading.Event(), threading.Event()

    def hold(what: str, done: int, total: int) -> None:
        inside.set()
        assert release.wait(timeout=120), "the test never released the switch"

    job = start_switch(settings, store, "r0001", "test", vectors=vectors, on_progress=hold)
    try:
        assert inside.wait(timeout=120), "the switch never started building"
        assert get_retriever(store, "r0001").index_state == "building"
        during = bot.answer(QUESTION)  # answered from the old pair while r0001's collection is built
        assert during.retriever == "base" and store.interaction(during.interaction_id)["retriever"] == "base"
        assert kb.dense.target.collection == "chunks" and kb.dense.embedder.identity == model_identity(
            settings.embedding_model)
        names = {c.name for c in chroma_client(settings).list_collections()}
        assert {"chunks", "chunks-r0001"} <= names
        before = store.scalar("SELECT COUNT(*) FROM chunks")
        late = settings.home / "late.md"
        late.write_text("# Parking\n\nVisitors park in the north garage, level 2, and show the badge at the gate.\n")
        assert kb.ingest([late]).count("added") == 1  # lands in the serving (old) collection
    finally:
        release.set()
    assert job.wait(timeout=120).version == "r0001"

    record = get_retriever(store, "r0001")
    assert record.status == "promoted" and record.index_state == "ready"
    after = bot.answer(QUESTION)  # no restart: the next search reads the registry
    assert after.retriever == "r0001" and store.interaction(after.interaction_id)["retriever"] == "r0001"
    new = VectorIndex(settings, "chunks-r0001", str(bundled_embedding_model()), "r0001")
    assert new.collection.metadata["embedding_model"] == model_identity(str(bundled_embedding_model()))
    assert new.ids() == {r["id"] for r in store.query("SELECT id FROM chunks")}  # the late document too
    audit = json.loads(store.query("SELECT detail FROM audit_log WHERE action = 'retriever.promote'")[0]["detail"])
    assert audit["reused"] == before and audit["embedded"] >= 1  # the gate's vectors, plus the late chunks
    parking = bot.retriever.search("Where do visitors park?").hits
    assert parking and parking[0].source == "late.md"

    # The README's measurement: the two on the admin's questions only, read back from both collections.
    measured, pair = compare_retrievers(settings, store, kb, "r0001", "base", _sample_qa(), heldout=False)
    assert pair["candidate"]["n"] == measured.paired == len(_sample_qa()) and pair["serving"]["label"] == "base"
    assert {i["origin"] for i in pair["candidate"]["items"]} == {"qa"}
    assert pair["candidate"]["hit@1"] > pair["serving"]["hit@1"]

    from typer.testing import CliRunner

    from bot.cli import app
    from storage.config import get_settings

    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(app, ["status", "--json"], env={"FLYWHEEL_HOME": str(settings.home)})
    finally:
        get_settings.cache_clear()
    info = json.loads(status.stdout)
    assert info["retriever"] == "r0001" and info["retriever_metrics"]["promote"] is True
    assert info["retriever_metrics"]["hit@1"] == reports["candidate"]["hit@1"]
    assert info["retriever_metrics"]["vs hit@1"] == reports["serving"]["hit@1"]

    # Rollback: the base collection was kept, so it only catches up (the late document is already in it).
    assert start_rollback(settings, store, "test").wait(timeout=120) is None
    assert bot.answer(QUESTION).retriever == "base" and get_retriever(store, "r0001").status == "rejected"
    rollback = json.loads(store.query("SELECT detail FROM audit_log WHERE action = 'retriever.rollback'")[0]["detail"])
    assert rollback["embedded"] == 0 and rollback["dropped"] == []
    assert "chunks-r0001" in {c.name for c in chroma_client(settings).list_collections()}  # kept until ...
    with pytest.raises(RegistryError, match="rejected by the retriever gate"):
        start_switch(settings, store, "r0001", "test").wait(timeout=60)

    # ... the next promotion: r0002 (the tiny model again, as a new version) serves; r0001's collection goes.
    copy = settings.home / "r0002-model"
    shutil.copytree(settings.embedding_model, copy)
    register(settings, store, version="r0002", path=copy, base_model="tiny")
    assert start_switch(settings, store, "r0002", "test").wait(timeout=120).version == "r0002"
    names = {c.name for c in chroma_client(settings).list_collections()}
    assert names == {"chunks", "chunks-r0002"} and get_retriever(store, "r0001").index_state == "dropped"
    assert bot.answer(QUESTION).retriever == "r0002"


def test_a_collection_is_never_searched_with_another_models_vectors(tiny_settings):
    from agent.retrieval import Retriever

    store = Store(tiny_settings.db_path)
    kb = KnowledgeBase(tiny_settings, store)
    tiny = model_identity(tiny_settings.embedding_model)
    assert kb.vectors.collection.metadata["embedding_model"] == tiny

    # Opening the tiny model's collection for MiniLM, or querying it with a MiniLM-embedded question: refused.
    with pytest.raises(EmbeddingMismatchError, match="holds vectors of .*refusing to mix.*--reindex"):
        VectorIndex(tiny_settings, "chunks", "")
    with pytest.raises(EmbeddingMismatchError, match="query embedded by 'bundled:all-MiniLM-L6-v2'"):
        kb.vectors.query(np.zeros(384, dtype=np.float32), 5, model="bundled:all-MiniLM-L6-v2")

    # A registry row that would serve MiniLM from the tiny model's collection: a fresh process refuses to
    # search; a running one keeps serving the consistent pair it has, and says which one served.
    store.insert("retrievers", {
        "version": "r0009", "path": str(bundled_embedding_model()), "base_model": "x", "collection": "chunks",
        "status": "promoted", "index_state": "ready", "created_at": "2026-01-01", "promoted_at": "2026-01-01"})
    with pytest.raises(EmbeddingMismatchError, match="'chunks' holds vectors of"):
        Retriever(KnowledgeBase(tiny_settings, store)).search(QUESTION)
    running = Retriever(kb).search(QUESTION)
    assert running.retriever == "base" and running.hits and kb.dense.embedder.identity == tiny
    store.execute("DELETE FROM retrievers")

    # Changing the configured embedder: refused until `flywheel ingest --reindex` rebuilds the collection.
    minilm = tiny_settings.model_copy(update={"embedding_model": ""})
    other = KnowledgeBase(minilm, store)
    with pytest.raises(EmbeddingMismatchError):
        other.dense  # noqa: B018
    assert other.reindex() == store.scalar("SELECT COUNT(*) FROM chunks")
    assert other.vectors.collection.metadata["embedding_model"] == "bundled:all-MiniLM-L6-v2"
    assert other.dense.search(QUESTION, 3)  # MiniLM's own vectors now


# --- the cycle -----------------------------------------------------------------------------------
def test_cycle_trains_and_gates_a_retriever_after_the_adapter(tiny_settings):
    from training.cycle import run_cycle

    settings = tiny_settings.model_copy(update={"gate_max_items": 4, "gate_max_new_tokens": 8, "epochs": 1,
                                                "gate_min_items": 1000})
    store = Store(settings.db_path)
    lines: list[str] = []
    result = run_cycle(settings, store, max_steps=1, force=True, on_progress=lines.append)
    assert result.status == "succeeded", result.error
    assert {"train", "evaluate", "retriever_train", "retriever_gate"} <= set(result.durations)
    assert "retriever_switch" not in result.durations  # too few questions to promote anything
    assert result.retriever_version == "r0001" and not result.retriever_promoted
    assert result.retriever_reasons[0].startswith("only ") and "Retriever r0001 not promoted" in result.summary()
    run = store.query("SELECT metrics FROM training_runs WHERE id = ?", (result.run_id,))[0]
    retriever = json.loads(run["metrics"])["retriever"]
    assert retriever["version"] == "r0001" and retriever["candidate"]["n"] >= 10 and "hit@1" in retriever["serving"]
    assert get_retriever(store, "r0001").status == "rejected"
    assert any("mining hard negatives" in line for line in lines)
