"""PDFs as teams really have them (shared/cases/pdf-cid-no-tounicode, pdf-two-column-stream-order):
a page whose font has no Unicode map, scanned pages, two columns drawn row by row, ruled tables,
form labels beside their values, tables of contents and indexes.

The OCR tests need Tesseract's English data (`apt-get install tesseract-ocr tesseract-ocr-eng`, which
.ci/run does) and are skipped without it; the tests of the no-OCR path switch OCR off themselves.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pymupdf
import pytest

from storage import pdf
from storage.config import Settings
from storage.knowledge import KnowledgeBase
from storage.parsing import parse_file
from storage.pdf import parse_pdf

CASES = Path(__file__).parent / "data" / "cases"
CID = CASES / "pdf-cid-no-tounicode" / "incident-policy.pdf"
NEWSLETTER = CASES / "pdf-two-column-stream-order" / "newsletter.pdf"
LIMIT = 10_000_000
# What PyMuPDF extracts from page 1 of the CID case: glyph codes, not letters.
GARBAGE_WORDS = ("LQFLGHQW", "PXVW", "UHSRUWHG", "5HVSRQVH")

needs_tesseract = pytest.mark.skipif(
    pdf.tessdata_dir() is None,
    reason="Tesseract's English data is not installed (apt-get install tesseract-ocr tesseract-ocr-eng)",
)


@pytest.fixture
def no_ocr(monkeypatch):
    """As on a machine without Tesseract."""
    monkeypatch.setattr(pdf, "tessdata_dir", lambda: None)


def body(doc) -> list[str]:
    return [b.text for b in doc.blocks if b.kind != "heading"]


def chunk_rows(kb: KnowledgeBase, name: str) -> list[dict]:
    return kb.store.query("SELECT text, page FROM chunks WHERE source = ? ORDER BY ord", (name,))


def search(kb: KnowledgeBase, question: str):
    from agent.retrieval import Retriever

    return Retriever(kb).search(question, k=3).hits


def scanned_pdf(path: Path, pages: list[tuple[list[str], bool]]) -> Path:
    """A PDF of (lines, scanned) pages: a scanned page is only an image of its lines, as scanners write."""
    out = pymupdf.open()
    for lines, scanned in pages:
        source = pymupdf.open()
        page = source.new_page()
        for i, line in enumerate(lines):
            page.insert_text((72, 160 + 24 * i), line, fontsize=14)
        if not scanned:
            out.insert_pdf(source)
            continue
        image = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY).tobytes("png")
        out.new_page().insert_image(page.rect, stream=image)
    out.save(path)
    return path


# --- broken text layers and scans ---------------------------------------------------------------
def test_text_quality_tells_garbage_from_text_in_any_script():
    clean = [
        "Security incidents must be reported to the on-call engineer within 30 minutes.",
        "Überstunden müssen innerhalb von 14 Tagen vom Vorgesetzten genehmigt werden.",
        "Заявление на отпуск подаётся за две недели через портал HR.",
        "出差住宿每晚最高报销600元。超过标准的部分由员工自行承担。",
        "def parse_pdf(path: Path, data: bytes) -> ParsedDocument: return doc.blocks[0]",
        "Tier 1 | London, Tokyo, Zurich | $380 | $120\nci-mac-1 | macOS 15 | 8 | IPv6 x86_64",
        "1 Introduction . . . . . . . . . . . . . . . . 1",
        "Part 4711-A2B3 | Bolt M6x20 DIN912 A2 | 30 pcs | SKU-7X9 | asn1Decoding ASN1TYPE sha256sum",
        "https://example.com/a1b2c3",  # too few words to judge: kept
    ]
    for text in clean:
        assert pdf.text_quality(text) >= 0.9, text
    english = " ".join(clean[0] for _ in range(4))
    # A font without a Unicode map extracts glyph codes: here letters shifted by 29, as in the CID case.
    shifted = " ".join("".join(chr(ord(c) - 29) for c in word) for word in english.split())
    controls = english.replace(" ", "\x03").replace("e", "\x10")
    symbols = " ".join("$%&'()" for _ in range(12))
    for text in (shifted, controls, symbols):
        assert pdf.text_quality(text) < pdf.MIN_QUALITY, text


@needs_tesseract
def test_page_without_unicode_map_is_ocrd_and_page_two_still_answers():
    doc = parse_file(CID, LIMIT)
    text = " ".join(body(doc))
    assert "Security incidents must be reported to the on-call engineer within 30 minutes." in text
    assert not any(word in text for word in GARBAGE_WORDS)
    assert [b.page for b in doc.blocks if "December change freeze" in b.text] == [2]
    assert doc.warnings == ["page 1 was read by OCR (Tesseract)"]


def test_page_without_unicode_map_is_reported_not_indexed_without_ocr(tmp_path, no_ocr, monkeypatch):
    from typer.testing import CliRunner

    from bot.cli import app
    from storage.config import get_settings

    home = tmp_path / "home"
    kb = KnowledgeBase(Settings(home=home))
    report = kb.ingest([CID.parent])
    assert not report.failed
    (warning,) = next(f for f in report.files if f.path.endswith(CID.name)).warnings
    assert warning.startswith("page 1 has an unreadable text layer (font without a Unicode map?)")
    assert "not indexed" in warning
    rows = chunk_rows(kb, CID.name)
    assert rows and {r["page"] for r in rows} == {2}  # nothing of page 1, garbage or not
    assert not any(word in r["text"] for r in rows for word in GARBAGE_WORDS)
    assert all(pdf.text_quality(r["text"]) >= pdf.MIN_QUALITY for r in rows)
    hit = search(kb, "Are production changes allowed in December?")[0]
    assert hit.page == 2
    assert "No production changes are allowed during the December change freeze." in hit.text
    assert json.loads(kb.documents()[0]["warnings"]) == [warning]
    kb.store.close()

    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(app, ["sources"], env={"COLUMNS": "400"})
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0 and "unreadable text layer" in shown.output, shown.output


def cid_page_with_good_lines(path: Path) -> Path:
    """The CID case's page 1 (four lines in a font without a Unicode map) plus normal lines below."""
    document = pymupdf.open(CID)
    page = document[0]
    for i in range(8):
        page.insert_text((72, 300 + 16 * i), f"Rule {i + 1}: the on-call rota for team {i + 1} changes every "
                                             "Monday at nine.", fontsize=11)
    document.save(path)
    return path


def test_unreadable_lines_on_a_readable_page_are_left_out_without_ocr(tmp_path, no_ocr):
    doc = parse_file(cid_page_with_good_lines(tmp_path / "mixed.pdf"), LIMIT)
    text = " ".join(body(doc))
    assert "Rule 1: the on-call rota for team 1 changes every Monday at nine." in text
    assert not any(word in text for word in GARBAGE_WORDS)
    assert doc.warnings[0].startswith("page 1 has lines with an unreadable text layer")


@needs_tesseract
def test_unreadable_lines_on_a_readable_page_are_ocrd(tmp_path):
    doc = parse_file(cid_page_with_good_lines(tmp_path / "mixed.pdf"), LIMIT)
    text = " ".join(body(doc))
    assert "Security incidents must be reported to the on-call engineer within 30 minutes." in text
    assert "the on-call rota for team 1 changes every Monday" in text
    assert not any(word in text for word in GARBAGE_WORDS)
    assert doc.warnings == ["page 1 was read by OCR (Tesseract)"]


@needs_tesseract
def test_scanned_page_is_ocrd(tmp_path):
    badges = ["Badge Policy", "Lost badges are reported within one hour."]
    path = scanned_pdf(tmp_path / "scan.pdf", [(["Visitors sign in at reception."], False), (badges, True)])
    doc = parse_file(path, LIMIT)
    assert "Lost badges are reported within one hour." in " ".join(body(doc))
    assert doc.warnings == ["page 2 was read by OCR (Tesseract)"]


def test_scanned_page_without_ocr_is_reported(tmp_path, no_ocr):
    badges = ["Badge Policy", "Lost badges are reported within one hour."]
    path = scanned_pdf(tmp_path / "scan.pdf", [(badges, True), (["Visitors sign in at reception."], False)])
    doc = parse_file(path, LIMIT)
    assert {b.page for b in doc.blocks} == {2}
    assert doc.warnings == ["page 1 is an image without text, not indexed: " + pdf.NO_TESSERACT]
    only_scans = scanned_pdf(tmp_path / "scans.pdf", [(badges, True)])
    with pytest.raises(pdf.ParseError, match="no extractable text .*Tesseract is not installed"):
        parse_file(only_scans, LIMIT)


def test_ocr_runs_only_on_pages_that_need_it(tmp_path, monkeypatch):
    calls = []

    def fake_ocr(page, **kwargs):
        calls.append(page.number + 1)
        raise RuntimeError("no OCR in this test")  # a failed OCR leaves the page out, reported

    monkeypatch.setattr(pdf, "tessdata_dir", lambda: "/nonexistent/tessdata")
    monkeypatch.setattr(pymupdf.Page, "get_textpage_ocr", fake_ocr)
    pages = [([f"Staff parking permits for zone {zone} are renewed every January."], zone == 2)
             for zone in range(1, 5)]  # page 2 is a scan
    path = scanned_pdf(tmp_path / "mixed.pdf", pages)
    doc = parse_file(path, LIMIT)
    assert calls == [2]
    assert {b.page for b in doc.blocks} == {1, 3, 4}
    assert doc.warnings == ["page 2 is an image without text, not indexed: OCR found no readable text"]


# --- reading order ------------------------------------------------------------------------------
def test_two_columns_drawn_row_by_row_are_read_column_by_column(tmp_path):
    """shared/cases/pdf-two-column-stream-order: the right column's sentence answers the question."""
    sentence = "Lost badges are reported to the security desk within one hour so they can be disabled."
    doc = parse_file(NEWSLETTER, LIMIT)
    assert body(doc) == [
        "Parking: Staff parking permits are renewed every January through the facilities portal. Visitors "
        "must register at reception and park only in the marked visitor bays on level two. Bicycles go in "
        "the secure cage next to the loading dock.",
        "Security: Badges must be worn visibly at all times inside the building. " + sentence
        + " Tailgating through the turnstiles is not allowed.",
    ]
    kb = KnowledgeBase(Settings(home=tmp_path / "home"))
    assert not kb.ingest([NEWSLETTER]).failed
    assert any(sentence in r["text"] for r in chunk_rows(kb, NEWSLETTER.name))  # contiguous in one chunk
    hits = search(kb, "When must lost badges be reported?")
    assert sentence in hits[0].text

    from agent.grounding import choose_quote
    from storage.embeddings import get_embedder

    quote = choose_quote("When must lost badges be reported?", hits, get_embedder().encode)
    assert quote is not None and "within one hour" in quote.answer


def newsletter(path: Path, pages: int = 2) -> Path:
    """Pages with a centred title across the gutter, two columns drawn row by row, a full-width
    closing paragraph, a running header and a page-number footer."""
    left = ["The cafeteria opens at eight", "and serves breakfast until ten",
            "every working day of the week."]
    right = ["The library lends laptops for", "up to three days at a time", "to every member of staff."]
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        page = doc.new_page()
        page.insert_text((72, 40), "Northwind Weekly", fontsize=9)
        page.insert_text((200, 130), f"Campus news, issue {number}", fontsize=16)
        for i, (a, b) in enumerate(zip(left, right)):
            page.insert_text((72, 170 + 14 * i), a, fontsize=10)
            page.insert_text((320, 170 + 14 * i), b, fontsize=10)
        page.insert_text((72, 240), "The whole campus is closed on public holidays, including the car park "
                                    "and the gym.", fontsize=10)
        page.insert_text((290, 810), f"Page {number} of {pages}", fontsize=9)
    doc.save(path)
    return path


def test_columns_between_a_spanning_title_and_footer_paragraph(tmp_path):
    doc = parse_file(newsletter(tmp_path / "weekly.pdf"), LIMIT)
    first_page = [b.text for b in doc.blocks if b.page == 1]
    assert first_page == [
        "Campus news, issue 1",
        "The cafeteria opens at eight and serves breakfast until ten every working day of the week.",
        "The library lends laptops for up to three days at a time to every member of staff.",
        "The whole campus is closed on public holidays, including the car park and the gym.",
    ]
    text = " ".join(b.text for b in doc.blocks)
    assert "Northwind Weekly" not in text and "Page 1 of 2" not in text  # running header/footer still dropped


def test_three_columns_drawn_row_by_row_are_read_left_to_right():
    columns = ["The cafeteria opens at eight and serves breakfast until ten every weekday morning.",
               "The library lends laptops to every member of staff for up to three days at a time.",
               "The gym closes at nine in the evening and stays closed on all public holidays."]
    wrapped = [textwrap.wrap(text, 28) for text in columns]
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((150, 90), "Campus bulletin", fontsize=16)
    for row in range(max(map(len, wrapped))):
        for lines, x in zip(wrapped, (50, 230, 410)):
            if row < len(lines):
                page.insert_text((x, 130 + 13 * row), lines[row], fontsize=9)
    assert body(parse_pdf(Path("bulletin.pdf"), document.tobytes())) == columns


def test_form_labels_stay_next_to_their_values(tmp_path):
    fields = [("Employee name:", "Jane Doe"), ("Date of the incident:", "12 March 2025"),
              ("Badge number:", "NW-4471"), ("Reported to:", "Security desk, level one")]
    path = tmp_path / "form.pdf"
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 80), "Lost badge report", fontsize=16)
    for i, (label, value) in enumerate(fields):
        page.insert_text((72, 120 + 20 * i), label, fontsize=10)
        page.insert_text((260, 120 + 20 * i), value, fontsize=10)
    document.save(path)
    text = " ".join(body(parse_file(path, LIMIT)))
    for label, value in fields:
        assert f"{label} {value}" in text, text


# --- tables, tables of contents, indexes --------------------------------------------------------
def ruled_table(page: pymupdf.Page, top: float, rows: list[list[str]], widths: list[float]) -> float:
    """Draw a table with a rule around every cell; return its bottom."""
    height, left = 18, 72
    for r, row in enumerate(rows):
        x = left
        for cell, width in zip(row, widths):
            page.draw_rect(pymupdf.Rect(x, top + r * height, x + width, top + (r + 1) * height), width=0.5)
            page.insert_text((x + 4, top + r * height + 13), cell, fontsize=9)
            x += width
    return top + len(rows) * height


def test_pdf_table_rows_carry_their_header(tmp_path):
    header = ["Host", "OS", "Cores"]
    machines = [[f"ci-linux-{i}", "Debian 12", str(4 + i % 4)] for i in range(1, 31)]
    machines.append(["ci-mac-1", "macOS 15", "8"])
    path = tmp_path / "fleet.pdf"
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 60), "Build machines", fontsize=16)
    page.insert_text((72, 85), "Every build runs on one of these machines.", fontsize=10)
    ruled_table(page, 100, [header] + machines[:20], [150, 150, 80])
    page = document.new_page()
    page.insert_text((72, 60), "The list continues with the remaining machines.", fontsize=10)
    bottom = ruled_table(page, 80, [header] + machines[20:], [150, 150, 80])
    page.insert_text((72, bottom + 30), "Ask the platform team for access.", fontsize=10)
    document.save(path)

    doc = parse_file(path, LIMIT)
    tables = [b for b in doc.blocks if b.kind == "table"]
    assert len(tables) >= 3  # long tables come in several blocks...
    assert all(t.text.split("\n")[0] == "Host | OS | Cores" for t in tables)  # ...each under the header
    rows = [row for t in tables for row in t.text.split("\n")[1:]]
    assert rows == [" | ".join(m) for m in machines]
    assert [t.page for t in tables if "ci-mac-1 | macOS 15 | 8" in t.text] == [2]
    assert body(doc)[-1] == "Ask the platform team for access."  # text after a table stays after it
    assert not any("ci-linux" in b.text for b in doc.blocks if b.kind != "table")  # cells aren't prose too


def test_table_of_contents_index_and_dot_leader_lines_are_left_out(tmp_path):
    path = tmp_path / "manual.pdf"
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 80), "Contents", fontsize=16)
    entries = [("Introduction", 2), ("Deploys", 2), ("Rollbacks", 3), ("Index", 4)]
    for i, (title, number) in enumerate(entries):
        page.insert_text((72, 120 + 16 * i), f"{i + 1} {title} " + ". " * 30 + str(number), fontsize=10)
    page = document.new_page()
    page.insert_text((72, 80), "Deploys", fontsize=16)
    page.insert_text((72, 110), "Deploys run every weekday at ten through the release pipeline.", fontsize=10)
    page.insert_text((72, 130), "See also: Rollbacks . . . . . . . . . . . . 3", fontsize=10)
    page = document.new_page()
    page.insert_text((72, 80), "Rollbacks", fontsize=16)
    page.insert_text((72, 110), "A rollback restores the previous release within five minutes.", fontsize=10)
    for number, entries in ((4, ["deploys, 2", "pipeline, 2, 3", "releases, 2, 3"]),
                            (5, ["rollbacks, 3", "weekdays, 2", "windows, 2, 3"])):
        page = document.new_page()
        if number == 4:
            page.insert_text((72, 80), "Index", fontsize=16)
        for i, entry in enumerate(entries):
            page.insert_text((72, 120 + 16 * i), entry, fontsize=10)
    document.save(path)

    doc = parse_file(path, LIMIT)
    assert {b.page for b in doc.blocks} == {2, 3}
    assert body(doc) == ["Deploys run every weekday at ten through the release pipeline.",
                         "A rollback restores the previous release within five minutes."]
    assert doc.warnings == []  # left out on purpose, not unreadable
