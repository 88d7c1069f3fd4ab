"""Office files and delimited text (storage/office.py), generated here with python-docx, python-pptx,
openpyxl and csv, parsed directly and ingested through the real KnowledgeBase (embedder, Chroma, BM25):
heading paths, slides as pages, speaker notes, sheets, header rows kept with every group of rows,
per-file errors for broken files, and unchanged files skipped on re-ingest."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage.config import Settings
from storage.documents import ParseError
from storage.knowledge import KnowledgeBase, expand_paths
from storage.parsing import SUPPORTED_SUFFIXES, parse_file

LIMIT = 10 * 2**20
HEADER = "host | os | cores"
# Enough machines that the table is cut into several groups and ci-mac-1 is not in the first one.
HOSTS = [(f"ci-linux-{n}", "Ubuntu 24.04", str(16 + n)) for n in range(1, 41)]
HOSTS.insert(30, ("ci-mac-1", "macOS 15", "8"))


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("Build farm", style="Title")
    document.add_heading("Machines", level=1)
    document.add_paragraph("The build farm runs every CI job of the monorepo.")
    table = document.add_table(rows=1, cols=3)
    for cell, name in zip(table.rows[0].cells, ("host", "os", "cores")):
        cell.text = name
    for host in HOSTS:
        for cell, value in zip(table.add_row().cells, host):
            cell.text = value
    document.add_paragraph("Machines are replaced every four years.")
    document.add_heading("Access", level=2)
    document.add_paragraph("SSH keys to the build machines are rotated every 90 days.")
    document.add_paragraph("Ask in #build-farm", style="List Bullet")
    document.add_paragraph("Name the host", style="List Bullet")
    document.add_heading("Support", level=1)
    document.add_paragraph("The infra team answers build farm questions within one working day.")
    document.save(path)
    return path


def make_pptx(path: Path) -> Path:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    intro = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
    intro.shapes.title.text = "Quarterly review"
    intro.placeholders[1].text_frame.text = "Revenue grew 12% over the quarter."
    slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    slide.shapes.title.text = "On-call rota"
    rows = [("week", "primary", "secondary"), ("1", "Ana", "Bo"), ("2", "Chen", "Dee")]
    table = slide.shapes.add_table(3, 3, Inches(1), Inches(2), Inches(6), Inches(2)).table
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    slide.notes_slide.notes_text_frame.text = "Swaps must be agreed two days before the shift starts."
    last = deck.slides.add_slide(deck.slide_layouts[1])
    last.shapes.title.text = "Next steps"
    body = last.placeholders[1].text_frame
    body.text = "Hire two SREs"
    body.add_paragraph().text = "Retire the old VPN by March"
    deck.save(path)
    return path


def make_xlsx(path: Path, extra_cores: int = 64) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    hosts = book.active
    hosts.title = "Hosts"
    hosts.append(["Build machines"])  # a title typed above the table
    hosts.append(["host", "os", "cores", "uptime"])
    hosts.append(["ci-mac-1", "macOS 15", 8.0, 0.995])
    hosts["D3"].number_format = "0.0%"
    hosts.append([])  # an empty row inside the data
    hosts.append(["ci-gpu-1", "Ubuntu 24.04", extra_cores, 0.97])
    owners = book.create_sheet("Owners")
    owners.append(["team", "lead"])
    owners.append(["infra", "Priya"])
    book.save(path)
    return path


def write_csv(path: Path, rows: list[tuple[str, ...]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def tables(doc) -> list[str]:
    return [b.text for b in doc.blocks if b.kind == "table"]


@pytest.fixture
def kb(tmp_path):
    return KnowledgeBase(Settings(home=tmp_path / "home"))


@pytest.fixture
def office_docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    make_docx(folder / "farm.docx")
    make_pptx(folder / "review.pptx")
    make_xlsx(folder / "inventory.xlsx")
    write_csv(folder / "owners.csv", [("service", "owner"), ("billing", "Ana"), ("search", "Bo")])
    return folder


# --- parsing ------------------------------------------------------------------------------------
def test_office_extensions_are_accepted_when_walking_a_folder(office_docs):
    found = {path.suffix for path, _ in expand_paths([office_docs])}
    assert found == {".docx", ".pptx", ".xlsx", ".csv"}
    assert {".docx", ".pptx", ".xlsx", ".csv", ".tsv"} <= SUPPORTED_SUFFIXES


def test_docx_heading_styles_give_paths_in_document_order(tmp_path):
    doc = parse_file(make_docx(tmp_path / "farm.docx"), LIMIT)
    assert doc.kind == "docx" and doc.title == "Build farm"
    body = [(b.kind, b.heading_path, b.text) for b in doc.blocks if b.kind != "heading"]
    texts = [text for _, _, text in body]
    # Paragraphs and the table interleave as in the document.
    intro = texts.index("The build farm runs every CI job of the monorepo.")
    replaced = texts.index("Machines are replaced every four years.")
    assert all(kind == "table" for kind, _, _ in body[intro + 1 : replaced]) and replaced > intro + 1
    paths = {text: path for _, path, text in body}
    assert paths["SSH keys to the build machines are rotated every 90 days."] == ("Build farm", "Machines", "Access")
    assert paths["The infra team answers build farm questions within one working day."] == ("Build farm", "Support")
    assert ("list", ("Build farm", "Machines", "Access"), "Ask in #build-farm\nName the host") in body


def test_docx_table_rows_carry_their_header_in_every_group(tmp_path):
    groups = tables(parse_file(make_docx(tmp_path / "farm.docx"), LIMIT))
    assert len(groups) > 1  # long enough to be cut
    assert all(group.split("\n")[0] == HEADER for group in groups)
    rows = [line for group in groups for line in group.split("\n")[1:]]
    assert rows == [" | ".join(host) for host in HOSTS]  # every row once, in order, header not repeated as a row
    assert "ci-mac-1 | macOS 15 | 8" not in groups[0]  # so its header really is a repeated one


def test_docx_row_merged_across_the_table_is_a_title_not_the_header(tmp_path):
    import docx

    document = docx.Document()
    table = document.add_table(rows=3, cols=3)
    table.cell(0, 0).merge(table.cell(0, 2)).text = "Build machines"
    for r, row in enumerate([("host", "os", "cores"), ("ci-mac-1", "macOS 15", "8")], start=1):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.save(tmp_path / "merged.docx")
    doc = parse_file(tmp_path / "merged.docx", LIMIT)
    assert [(b.kind, b.text) for b in doc.blocks] == [
        ("paragraph", "Build machines"), ("table", f"{HEADER}\nci-mac-1 | macOS 15 | 8")]


def test_pptx_slide_titles_pages_tables_and_notes(tmp_path):
    doc = parse_file(make_pptx(tmp_path / "review.pptx"), LIMIT)
    assert doc.kind == "pptx" and doc.pages == 3
    headings = [(b.text, b.page) for b in doc.blocks if b.kind == "heading"]
    assert headings == [("Quarterly review", 1), ("On-call rota", 2), ("Next steps", 3)]
    body = {b.text: (b.page, b.heading_path, b.kind) for b in doc.blocks if b.kind != "heading"}
    assert body["week | primary | secondary\n1 | Ana | Bo\n2 | Chen | Dee"] == (2, ("On-call rota",), "table")
    notes = "Speaker notes: Swaps must be agreed two days before the shift starts."
    assert body[notes] == (2, ("On-call rota",), "paragraph")
    assert body["Hire two SREs\nRetire the old VPN by March"][:2] == (3, ("Next steps",))


def test_xlsx_one_section_per_sheet_rows_with_header(tmp_path):
    doc = parse_file(make_xlsx(tmp_path / "inventory.xlsx"), LIMIT)
    assert [b.text for b in doc.blocks if b.kind == "heading"] == ["Hosts", "Owners"]
    by_sheet = {b.heading_path: b.text for b in doc.blocks if b.kind == "table"}
    assert by_sheet[("Hosts",)] == ("host | os | cores | uptime\n"
                                     "ci-mac-1 | macOS 15 | 8 | 99.5%\n"  # 8 not 8.0; the cell's % format
                                     "ci-gpu-1 | Ubuntu 24.04 | 64 | 0.97")  # empty row skipped
    assert by_sheet[("Owners",)] == "team | lead\ninfra | Priya"
    assert any(b.text == "Build machines" and b.kind == "paragraph" for b in doc.blocks)  # title, not header


def test_huge_sheets_and_workbooks_are_capped_with_warnings(tmp_path, monkeypatch):
    import openpyxl

    import storage.office as office

    monkeypatch.setattr(office, "MAX_SHEET_ROWS", 50)
    monkeypatch.setattr(office, "MAX_WORKBOOK_ROWS", 80)
    book = openpyxl.Workbook()
    book.active.title = "Jan"
    for sheet in (book.active, book.create_sheet("Feb"), book.create_sheet("Mar")):
        sheet.append(["n", "event"])
        for n in range(1, 100):
            sheet.append([n, f"event {n}"])
    book.save(tmp_path / "log.xlsx")
    doc = parse_file(tmp_path / "log.xlsx", LIMIT)
    rows = {}
    for block in doc.blocks:
        if block.kind == "table":
            rows.setdefault(block.heading_path, []).extend(block.text.split("\n")[1:])
    first, second = rows[("Jan",)], rows[("Feb",)]
    assert first[0] == "1 | event 1" and first[-1] == "49 | event 49" and len(first) == 49  # 50 incl. header
    assert len(second) == 29 and set(rows) == {("Jan",), ("Feb",)}  # the workbook's last 30 rows
    assert doc.warnings == ["sheet 'Jan': only the first 50 rows indexed",
                            "sheet 'Feb': only the first 30 rows indexed",
                            "sheet 'Mar' not indexed: over 80 rows in the workbook"]


def test_csv_delimiter_is_sniffed_and_header_kept_with_each_group(tmp_path):
    rows = [("host", "os", "cores"), *HOSTS]
    semicolon = parse_file(write_csv(tmp_path / "hosts.csv", rows, delimiter=";"), LIMIT)
    tsv = parse_file(write_csv(tmp_path / "hosts.tsv", rows, delimiter="\t"), LIMIT)
    utf16 = parse_file(write_csv(tmp_path / "hosts16.csv", rows, encoding="utf-16"), LIMIT)
    for doc in (semicolon, tsv, utf16):
        groups = tables(doc)
        assert len(groups) > 1 and all(group.split("\n")[0] == HEADER for group in groups)
        assert any("ci-mac-1 | macOS 15 | 8" in group for group in groups)
    assert tables(semicolon) == tables(tsv) == tables(utf16)
    assert (semicolon.encoding, utf16.encoding) == ("utf-8", "utf-16")  # recorded like any text file's


def test_corrupt_and_protected_files_give_readable_errors(tmp_path):
    data = make_docx(tmp_path / "farm.docx").read_bytes()
    (tmp_path / "cut.docx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError, match=r"^not a valid Word document: damaged or truncated file"):
        parse_file(tmp_path / "cut.docx", LIMIT)
    (tmp_path / "locked.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + os.urandom(600))
    with pytest.raises(ParseError, match="password-protected or old binary-format Excel workbook"):
        parse_file(tmp_path / "locked.xlsx", LIMIT)
    (tmp_path / "blank.csv").write_text("\n ; \n\n")
    with pytest.raises(ParseError, match="no text found"):
        parse_file(tmp_path / "blank.csv", LIMIT)


# --- ingestion ----------------------------------------------------------------------------------
def test_ingested_chunks_keep_slide_sheet_and_heading_provenance(kb, office_docs):
    report = kb.ingest([office_docs])
    assert report.count("added") == 4 and not report.failed
    rows = kb.store.query("SELECT source, page, heading, text FROM chunks")
    slides = {(r["page"], r["heading"]) for r in rows if r["source"] == "review.pptx"}
    assert slides == {(1, "Quarterly review"), (2, "On-call rota"), (3, "Next steps")}
    assert any("Speaker notes: Swaps must be agreed" in r["text"] and r["page"] == 2 for r in rows)
    sheets = {r["heading"]: r["text"] for r in rows if r["source"] == "inventory.xlsx" and "|" in r["text"]}
    assert sheets["Owners"] == "team | lead\ninfra | Priya"
    assert "Build machines\n\nhost | os | cores | uptime\nci-mac-1 | macOS 15 | 8 | 99.5%" in sheets["Hosts"]
    docx_headings = {r["heading"] for r in rows if r["source"] == "farm.docx"}
    assert "Build farm > Machines > Access" in docx_headings
    assert next(r for r in rows if r["source"] == "owners.csv")["text"] == "service | owner\nbilling | Ana\nsearch | Bo"


def test_ci_mac_row_is_retrieved_with_its_header(kb, tmp_path):
    from agent.retrieval import Retriever

    folder = tmp_path / "docs"
    folder.mkdir()
    make_docx(folder / "farm.docx")
    kb.ingest([folder])
    hits = Retriever(kb).search("How many cores does ci-mac-1 have?", k=3).hits
    top = hits[0].text.split("\n")
    assert "ci-mac-1 | macOS 15 | 8" in top and top[0] == HEADER


def test_broken_office_file_fails_alone_and_sources_says_why(tmp_path, office_docs, monkeypatch):
    from bot.cli import app
    from storage.config import get_settings

    data = (office_docs / "farm.docx").read_bytes()
    (office_docs / "truncated.docx").write_bytes(data[: len(data) // 2])
    (office_docs / "garbage.pptx").write_bytes(b"PK\x03\x04" + os.urandom(3000))
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("COLUMNS", "250")  # one table row per document in `sources`
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        ingest = runner.invoke(app, ["ingest", str(office_docs)])
        assert ingest.exit_code == 1 and "4 added" in ingest.stdout, ingest.output
        sources = runner.invoke(app, ["sources"])
        lines = {line.split()[1]: line for line in sources.stdout.splitlines() if line.split()[1:2]}
        assert "failed: not a valid Word document: damaged or truncated file" in lines["truncated.docx"]
        assert "failed: not a valid PowerPoint file" in lines["garbage.pptx"]
        assert all(" ok " in lines[name] for name in ("farm.docx", "review.pptx", "inventory.xlsx", "owners.csv"))
    finally:
        get_settings.cache_clear()


def test_unchanged_office_files_are_skipped_and_a_changed_sheet_replaced(kb, office_docs):
    kb.ingest([office_docs])
    again = kb.ingest([office_docs])
    assert again.count("unchanged") == 4 and again.chunks == 0
    make_xlsx(office_docs / "inventory.xlsx", extra_cores=96)
    third = kb.ingest([office_docs])
    assert [(Path(f.path).name, f.status) for f in third.files if f.status != "unchanged"] == [
        ("inventory.xlsx", "updated")]
    hosts = kb.store.query("SELECT text FROM chunks WHERE source = 'inventory.xlsx' AND heading = 'Hosts'")
    assert any("ci-gpu-1 | Ubuntu 24.04 | 96" in r["text"] for r in hosts)
    assert not any("| 64 |" in r["text"] for r in hosts)
