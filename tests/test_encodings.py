"""Text files in any common encoding (shared/cases/utf16-text, copied to tests/data/cases): BOM-marked
UTF-8/16/32, BOM-less UTF-16/32, legacy code pages; the encoding used is stored and shown by `flywheel
sources`; text that still looks like mojibake is reported per file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage.config import Settings
from storage.db import connect
from storage.knowledge import KnowledgeBase
from storage.parsing import decode_text, parse_file

CASE = Path(__file__).parent / "data" / "cases" / "utf16-text"
LIMIT = 10_000_000
RUNBOOK = "Nightly backups run at 02:30 UTC and are kept for 14 days – café rules, naïve façade."


def text_of(doc) -> str:
    return "\n".join(b.text for b in doc.blocks)


def chunks_by_file(kb: KnowledgeBase) -> dict[str, list[tuple[str | None, str]]]:
    out: dict[str, list[tuple[str | None, str]]] = {}
    for row in kb.store.query("SELECT source, heading, text FROM chunks ORDER BY source, ord"):
        out.setdefault(row["source"], []).append((row["heading"], row["text"]))
    return out


def test_case_variants_give_the_same_chunks_and_record_their_encoding(tmp_path):
    kb = KnowledgeBase(Settings(home=tmp_path / "home"))
    files = [CASE / n for n in ("runbook.txt", "runbook-utf8.txt", "runbook-utf16.md", "runbook-bom-crlf.md")]
    report = kb.ingest(files)
    assert not report.failed and report.count("added") == 4
    chunks = chunks_by_file(kb)
    assert chunks["runbook.txt"] == chunks["runbook-utf8.txt"]  # UTF-16LE + BOM + CRLF reads as UTF-8 does
    assert chunks["runbook-utf16.md"] == chunks["runbook-bom-crlf.md"]
    assert chunks["runbook.txt"][0] == ("Backup runbook", "Nightly backups run at 02:30 UTC and are kept for 14 days. "
                                        "To restore a backup, run restore-db --snapshot latest on the standby host.")
    assert chunks["runbook-utf16.md"] == [("Backups", "Nightly backups run at 02:30 UTC and are kept for 14 days.")]
    encodings = {d["name"]: d["encoding"] for d in kb.documents()}
    assert encodings == {"runbook.txt": "utf-16", "runbook-utf8.txt": "utf-8", "runbook-utf16.md": "utf-16",
                         "runbook-bom-crlf.md": "utf-8-sig"}
    for path in files:  # the recorded codec decodes the file's bytes, BOM included
        assert "Nightly backups" in path.read_bytes().decode(encodings[path.name])


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_without_bom(tmp_path, codec):
    path = tmp_path / "runbook.md"
    path.write_bytes(f"# Backups\r\n\r\n{RUNBOOK}\r\n".encode(codec))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == codec and [b.text for b in doc.blocks] == ["Backups", RUNBOOK]


def test_utf16_without_bom_in_a_script_without_ascii(tmp_path):
    text = "备份每天凌晨两点运行，保留十四天。恢复时请在备用主机上运行恢复命令。"
    path = tmp_path / "beifen.txt"
    path.write_bytes(text.encode("utf-16-le"))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == "utf-16-le" and text_of(doc) == text


@pytest.mark.parametrize("codec,text", [
    ("cp1252", "Mitarbeiter können nach sechs Monaten Urlaub nehmen – der Antrag geht an die Führungskraft."),
    ("cp1251", "Сотрудник может взять отпуск после шести месяцев работы. Заявление подаётся руководителю."),
    ("cp1250", "Zażółć gęślą jaźń – polski tekst o urlopie i pracy zdalnej w firmie."),
])
def test_legacy_code_pages(tmp_path, codec, text):
    path = tmp_path / "policy.txt"
    path.write_bytes(text.encode(codec))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == codec and text_of(doc) == text and doc.warnings == []


def test_binary_with_nul_bytes_is_still_refused(tmp_path):
    from storage.documents import ParseError

    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    with pytest.raises(ParseError, match="binary file, not text"):
        parse_file(path, LIMIT)


def test_invalid_bytes_after_a_bom_are_refused():
    from storage.documents import ParseError

    with pytest.raises(ParseError, match="not valid utf-8 text"):
        decode_text(b"\xef\xbb\xbfok \xff\xfe broken")


def test_mojibake_is_reported(tmp_path):
    """UTF-8 that some tool read as Windows-1252 and saved again: valid UTF-8, wrong text."""
    path = tmp_path / "menu.md"
    path.write_bytes(f"# Menu\n\n{RUNBOOK}\n".encode("utf-8").decode("cp1252").encode("utf-8"))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == "utf-8" and "cafÃ©" in text_of(doc)
    assert len(doc.warnings) == 1 and "garbled" in doc.warnings[0] and "cafÃ©" in doc.warnings[0]


def test_replacement_characters_are_reported(tmp_path):
    path = tmp_path / "lossy.txt"
    path.write_text("The caf\ufffd\ufffd opens at 08:00. Ask for cr\ufffdme br\ufffdl\ufffde.\n")
    doc = parse_file(path, LIMIT)
    assert any("4 run(s) of undecodable characters" in w for w in doc.warnings)


def test_clean_text_in_many_scripts_has_no_warning(tmp_path):
    path = tmp_path / "clean.md"
    path.write_text("# Policies\n\nGrüße aus München – “quoted” São Paulo naïve résumé.\n\n"
                    "Сотрудник может взять отпуск.\n\n员工可以在工作六个月后休假。\n")
    assert parse_file(path, LIMIT).warnings == []


def test_migration_adds_the_encoding_column(tmp_path):
    db = connect(tmp_path / "fresh.db")
    assert "encoding" in db["documents"].columns_dict
    old = sqlite3.connect(tmp_path / "v3.db")  # a database made before migration 4 keeps its rows
    from storage.db import MIGRATIONS

    for script in MIGRATIONS[:3]:
        old.executescript(script)
    old.execute("INSERT INTO documents (id, path, name, status, updated_at) VALUES ('d', '/x', 'x', 'ok', 'now')")
    old.execute("PRAGMA user_version=3")
    old.commit()
    old.close()
    db = connect(tmp_path / "v3.db")
    assert [dict(r) for r in db.query("SELECT name, encoding FROM documents")] == [{"name": "x", "encoding": None}]


def test_sources_shows_encoding_and_warnings(tmp_path, monkeypatch):
    from bot.cli import app
    from storage.config import get_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "runbook.txt").write_bytes((CASE / "runbook.txt").read_bytes())
    (docs / "menu.md").write_bytes("# Menu\n\nCafé crème.\n".encode("utf-8").decode("cp1252").encode("utf-8"))
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["ingest", str(docs)]).exit_code == 0
        out = runner.invoke(app, ["sources"]).stdout
        runbook = next(line for line in out.splitlines() if "runbook.txt" in line)
        assert "utf-16" in runbook
        assert "text looks garbled" in out and "CafÃ©" in out
        kb = KnowledgeBase(get_settings())
        stored = {d["name"]: d for d in kb.documents()}
        assert stored["runbook.txt"]["warnings"] is None
        assert "garbled" in json.loads(stored["menu.md"]["warnings"])[0]
    finally:
        get_settings.cache_clear()
