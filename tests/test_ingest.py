"""Ingestion end to end through the real embedder, Chroma and BM25: incremental updates, pruning,
and bad input that is reported per file while nothing already stored is lost."""

from __future__ import annotations

import os
import pymupdf
import pytest
from typer.testing import CliRunner

from storage.config import Settings
from storage.knowledge import KnowledgeBase
from storage.samples import sample_handbook


@pytest.fixture
def kb(tmp_path):
    return KnowledgeBase(Settings(home=tmp_path / "home", max_file_mb=1))


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "deploys.md").write_text("# Deploys\n\n## Canary\n\nCanary deploys take 5% of traffic for 30 minutes.\n")
    (folder / "notes.txt").write_text("The staging cluster is called Halibut.\n\nIt runs in eu-west-2.\n")
    return folder


def _search(kb, text, k=3):
    from agent.retrieval import Retriever

    return Retriever(kb).search(text, k=k).hits


def test_incremental_ingest_skips_unchanged_and_replaces_changed(kb, docs):
    first = kb.ingest([docs])
    assert first.count("added") == 2 and not first.failed
    second = kb.ingest([docs])
    assert second.count("unchanged") == 2 and second.chunks == 0

    (docs / "notes.txt").write_text("The staging cluster is now called Marlin.\n")
    third = kb.ingest([docs])
    assert third.count("updated") == 1 and third.count("unchanged") == 1
    texts = [h.text for h in _search(kb, "what is the staging cluster called")]
    assert any("Marlin" in t for t in texts) and not any("Halibut" in t for t in texts)
    assert kb.vectors.count() == kb.stats()["chunks"]  # old vectors deleted


def test_prune_drops_files_that_disappeared(kb, docs):
    kb.ingest([docs])
    os.remove(docs / "notes.txt")
    report = kb.ingest([docs], prune=True)
    assert report.count("pruned") == 1
    assert [d["name"] for d in kb.documents()] == ["deploys.md"]
    assert all(h.source == "deploys.md" for h in _search(kb, "staging cluster"))


def test_bad_files_are_reported_and_the_rest_ingested(kb, docs, tmp_path):
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    (docs / "empty.md").write_text("")
    (docs / "blob.txt").write_bytes(bytes(range(256)) * 8)
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    (docs / "huge.txt").write_text("word " * 300_000)  # 1.5 MB, over the 1 MB limit set above
    locked = docs / "locked.pdf"
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "secret plans")
    pdf.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="u")

    report = kb.ingest([docs])
    reasons = {os.path.basename(f.path): f.error for f in report.failed}
    assert set(reasons) == {"corrupt.pdf", "empty.md", "blob.txt", "huge.txt", "locked.pdf"}
    assert "encrypted" in reasons["locked.pdf"] and "limit" in reasons["huge.txt"]
    assert "empty" in reasons["empty.md"] and "binary" in reasons["blob.txt"]
    assert [f.path for f in report.files if f.status == "skipped"] == [str(docs / "photo.png")]
    assert report.count("added") == 2  # the good files still went in
    failed = {d["name"]: d["error"] for d in kb.documents() if d["status"] == "failed"}
    assert set(failed) == set(reasons)


def test_a_good_file_turned_bad_keeps_its_chunks(kb, docs):
    kb.ingest([docs])
    before = kb.stats()["chunks"]
    (docs / "deploys.md").write_bytes(b"\x00\x01\x02" * 100)
    report = kb.ingest([docs])
    assert len(report.failed) == 1
    assert kb.stats()["chunks"] == before  # nothing lost
    doc = next(d for d in kb.documents() if d["name"] == "deploys.md")
    assert doc["status"] == "stale" and "binary" in doc["error"]
    assert any("Canary" in h.text for h in _search(kb, "canary deploy traffic"))


def test_pdf_pages_and_headings_are_kept(kb):
    report = kb.ingest([sample_handbook() / "travel-policy.pdf"])
    assert report.files[0].pages == 6
    rows = kb.store.query("SELECT page, heading, text FROM chunks")
    assert {r["page"] for r in rows} <= set(range(1, 7)) and len({r["page"] for r in rows}) >= 5
    assert all("Page " not in r["text"] or " of 6" not in r["text"] for r in rows)  # footers dropped
    assert any(r["heading"] for r in rows)


def test_cli_ingest_exit_status(tmp_path, docs, monkeypatch):
    from bot.cli import app
    from storage.config import get_settings

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "cli-home"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        ok = runner.invoke(app, ["ingest", str(docs)])
        assert ok.exit_code == 0, ok.output
        assert "2 added" in ok.stdout
        (docs / "bad.pdf").write_bytes(b"not a pdf at all")
        bad = runner.invoke(app, ["ingest", str(docs)])
        assert bad.exit_code == 1
        assert "bad.pdf" in bad.output and "2 unchanged" in bad.stdout
    finally:
        get_settings.cache_clear()


def test_disk_full_during_store_loses_nothing(kb, docs):
    """A real SQLITE_FULL: the database may not grow, so storing the new version fails mid-way."""
    kb.ingest([docs])
    before = kb.stats()["chunks"]
    vectors_before = kb.vectors.count()
    (docs / "deploys.md").write_text("# Deploys\n\n" + "Canary deploys now take 10% of traffic. " * 400)
    pages = kb.store.scalar("PRAGMA page_count")
    kb.store.execute(f"PRAGMA max_page_count = {pages + 1}")
    report = kb.ingest([docs])
    assert "disk full" in report.failed[0].error
    kb.store.execute("PRAGMA max_page_count = 1073741823")
    assert kb.stats()["chunks"] == before
    assert kb.vectors.count() == vectors_before  # the new version's vectors were rolled back too
    assert any("5%" in h.text for h in _search(kb, "canary traffic share"))


def test_dense_query_asks_for_more_than_the_collection_holds(kb, docs):
    """VectorIndex.query passes k straight to Chroma (no count() per query): a collection, or a source filter,
    with fewer chunks than k returns what it has, and an empty collection returns nothing."""
    dense = kb.dense
    vector = dense.embedder.encode(["staging cluster"])[0]
    assert dense.index.query(vector, 40) == []
    kb.ingest([docs])
    held = dense.index.count()
    assert 0 < held < 40
    found = dense.index.query(vector, 40)
    assert len(found) == held and found[0][1] >= found[-1][1]
    only = dense.index.query(vector, 40, sources=["notes.txt"])
    assert only and {cid for cid, _ in only} < {cid for cid, _ in found}
