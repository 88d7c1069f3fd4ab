"""Turn a PDF into a `ParsedDocument`: each page's lines in reading order, tables as rows, headings from
the outline and fonts, page furniture and navigation pages left out.

    parse_pdf(Path("handbook.pdf"), data) -> ParsedDocument  (blocks carry their 1-based page)

Each page goes through these stages, in this order:
  1. text: the page's text layer, unless it is missing (a scan) or garbage (a font without a Unicode
     map extracts as scrambled letters; `text_quality` measures it). Such a page is OCR'd with
     Tesseract through PyMuPDF when Tesseract's language data is installed (`tessdata_dir`), else it
     is reported in `ParsedDocument.warnings` and left out: garbage is never indexed;
  2. tables: ruled tables (PyMuPDF `find_tables`) become rows "a | b | c" grouped under their header
     row (`storage.parsing._add_table`, as HTML and Markdown tables);
  3. reading order: columns are read one after the other (`_reading_order`), even when the content
     stream draws them row by row across the page;
  4. running headers/footers, page numbers and dot-leader lines are dropped, table-of-contents and
     index pages are left out whole;
  5. headings from the outline (bookmarks) and from font size and weight.

Raises `ParseError` for encrypted, broken or text-less PDFs. Called by `storage.parsing.parse_file`.
"""

from __future__ import annotations

import bisect
import functools
import glob
import itertools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from storage.documents import ParsedDocument, ParseError
from storage.parsing import _add_table, _Builder

OCR_LANGUAGE = "eng"  # Debian's tesseract-ocr-eng; more packs can be added as "eng+deu"
OCR_DPI = 300  # Tesseract's recommended resolution; lower loses small print
MIN_QUALITY = 0.6  # text_quality below this is garbage: clean text in any script scores >= 0.95
NO_TESSERACT = "Tesseract is not installed (apt-get install tesseract-ocr tesseract-ocr-eng)"


@dataclass
class _Line:
    text: str
    size: float
    bold: bool
    y0: float  # top of the line as a fraction of the page height (0 = top edge)
    block: tuple[int, int]  # (column, PyMuPDF block): a paragraph never runs across either
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in points
    rows: list[list[str]] | None = None  # set for a table: its rows' cells, header row first
    heading_level: int = 0
    continues_heading: bool = False  # second line of a heading wrapped over two lines


# "12", "xii", "Page 3", "Page 3 of 10", "3 / 10", "- 12 -"
_PAGE_NUMBER = re.compile(
    r"^(page\s+)?(\d{1,4}|[ivxlcdm]{1,6})(\s*(of|/)\s*\d{1,4})?$|^[-\u2013]\s*\d{1,4}\s*[-\u2013]$", re.I
)


def parse_pdf(path: Path, data: bytes) -> ParsedDocument:
    import pymupdf

    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # pymupdf raises FileDataError / RuntimeError variants
        raise ParseError(f"not a valid PDF: {exc}") from exc
    with doc:
        if doc.needs_pass:
            raise ParseError("encrypted PDF (password required)")
        if doc.page_count == 0:
            raise ParseError("PDF has no pages")
        # Image bytes are slow and unused; ligatures ("\ufb00") would break search for "effective".
        flags = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES & ~pymupdf.TEXT_PRESERVE_LIGATURES
        tessdata = tessdata_dir()
        try:
            read = [_read_page(page, flags, tessdata) for page in doc]
            toc = doc.get_toc()
        except Exception as exc:
            raise ParseError(f"not a valid PDF: {exc}") from exc
        metadata_title = (doc.metadata or {}).get("title") or None

    pages = [lines for lines, _ in read]
    status = {number: how for number, (_, how) in enumerate(read, 1)}
    warnings = _page_warnings(status, tessdata)
    if not any(pages):
        if "garbage" in status.values():
            why = NO_TESSERACT if tessdata is None else "OCR found no readable text either"
            raise ParseError(f"PDF text is unreadable (fonts without a Unicode map?): {why}")
        no_ocr = f"; {NO_TESSERACT} to OCR it" if "scan" in status.values() and tessdata is None else ""
        raise ParseError(f"PDF has no extractable text (scanned images only?){no_ocr}")

    _drop_running_lines(pages)
    _drop_navigation(pages)
    pending_toc = _mark_headings(pages, toc)
    builder = _Builder()
    for number, lines in enumerate(pages, 1):
        for level, title in pending_toc.get(number, []):  # outline entries not found in the page text
            builder.heading(title, level, page=number)
        para: list[_Line] = []
        for line in lines:
            if line.rows:
                _emit_paragraph(builder, para, number)
                first = len(builder.blocks)
                _add_table(builder, line.rows, header_rows=1)  # rows grouped under their header, as HTML's
                for block in builder.blocks[first:]:
                    block.page = number
            elif line.heading_level:
                _emit_paragraph(builder, para, number)
                if not _extend_heading(builder, line):
                    builder.heading(line.text, line.heading_level, page=number)
            elif para and (line.block != para[-1].block or abs(line.size - para[-1].size) > 1):
                _emit_paragraph(builder, para, number)
                para.append(line)
            else:
                para.append(line)
        _emit_paragraph(builder, para, number)
    if not any(b.kind != "heading" for b in builder.blocks):
        raise ParseError("PDF has no text besides its table of contents or index")
    title = metadata_title or next((b.text for b in builder.blocks if b.kind == "heading"), None)
    return ParsedDocument(path, "pdf", builder.blocks, pages=len(pages), title=title, warnings=warnings)


# --- 1. text: the text layer, or OCR ------------------------------------------------------------
def _read_page(page, flags: int, tessdata: str | None) -> tuple[list[_Line], str]:
    """The page's lines in reading order, and how it was read.

    How: "text" (its text layer), "ocr" (OCR'd), "partial" (its text layer without the lines that
    don't read, as no OCR was possible), "blank" (no text, nothing to OCR), "scan" (an image without
    text, not OCR'd or OCR found nothing) or "garbage" (unreadable text layer, left out).
    """
    lines = _text_lines(page.get_text("dict", flags=flags))
    readable = [line for line in lines if text_quality(line.text) >= MIN_QUALITY]
    page_reads = bool(readable) and text_quality(" ".join(line.text for line in readable)) >= MIN_QUALITY
    if page_reads and len(readable) == len(lines):
        return _reading_order(_with_tables(page, lines)), "text"
    # Only images (a scan) or many vector paths (text drawn as outlines) can hold text to OCR.
    if not lines and not page.get_images() and len(page.get_cdrawings()) < 20:
        return [], "blank"
    if tessdata is not None:
        try:
            textpage = page.get_textpage_ocr(flags=flags, language=OCR_LANGUAGE, dpi=OCR_DPI, full=True,
                                             tessdata=tessdata)
            ocr = _text_lines(page.get_text("dict", flags=flags, textpage=textpage))
        except Exception:  # a broken image or language file fails this page's OCR, not the whole PDF
            ocr = []
        if ocr and text_quality(" ".join(line.text for line in ocr)) >= MIN_QUALITY:
            return _reading_order(ocr), "ocr"
    if page_reads:  # a few lines in a font without a Unicode map: the rest of the page still counts
        return _reading_order(_with_tables(page, readable)), "partial"
    return [], "garbage" if lines else "scan"


@functools.lru_cache(maxsize=1)
def tessdata_dir() -> str | None:
    """Tesseract's language-data folder holding `OCR_LANGUAGE`, or None when OCR is unavailable.

    PyMuPDF runs Tesseract itself (MuPDF embeds it) and needs only this folder: $TESSDATA_PREFIX,
    else the folder `tesseract --list-langs` names (pymupdf.get_tessdata), else the usual install
    places (Debian/Ubuntu, Fedora, Homebrew). Cached: it may run `tesseract` once per process.
    """
    import pymupdf

    candidates = []
    try:
        candidates.append(pymupdf.get_tessdata())
    except Exception:  # RuntimeError when no Tesseract is installed
        pass
    candidates += sorted(glob.glob("/usr/share/tesseract-ocr/*/tessdata"), reverse=True)
    candidates += ["/usr/share/tessdata", "/usr/local/share/tessdata", "/opt/homebrew/share/tessdata"]
    for candidate in candidates:
        # Tesseract 3 wanted the parent of "tessdata" in $TESSDATA_PREFIX, 4+ the folder itself.
        for folder in (Path(candidate), Path(candidate) / "tessdata"):
            if (folder / f"{OCR_LANGUAGE}.traineddata").is_file():
                return str(folder)
    return None


def _text_lines(page_dict: dict) -> list[_Line]:
    """Non-blank lines of a `get_text("dict")` page, in content-stream order."""
    height = float(page_dict.get("height") or 1.0)
    lines = []
    for block in page_dict.get("blocks", []):
        if block.get("type", 0) != 0:  # image block
            continue
        for line in block.get("lines", []):
            spans = [s for s in line.get("spans", []) if s.get("text", "").strip()]
            text = "".join(s["text"] for s in line.get("spans", [])).strip()
            if not spans or not text:
                continue
            main = max(spans, key=lambda s: len(s["text"]))
            bold = all(s["flags"] & 16 or re.search(r"bold|black|heavy", s["font"], re.I) for s in spans)
            size = round(main["size"] * 2) / 2  # half points: 10.98 and 11.0 are the same font
            bbox = tuple(float(v) for v in line["bbox"])
            lines.append(_Line(text, size, bool(bold), bbox[1] / height, (0, block["number"]), bbox))
    return lines


def _bad_char(ch: str) -> bool:
    """Control, private-use, unassigned or replacement characters: what unmapped glyph codes become."""
    category = unicodedata.category(ch)
    return (category == "Cc" and ch not in "\t\n\r") or category in ("Co", "Cn", "Cs") or ch == "\ufffd"


# Parts of a word between punctuation: letters, maybe with digits after the first ("policy", "v2",
# "asn1Decoding"), or digits with runs of at most 3 letters, as codes are ("30", "15th", "M6x20", "4K").
# Not a digit then a long run of letters: how capitals read in shifted glyph codes ("5HVSRQVH").
_WORD_PART = re.compile(r"[^\W\d_]+(?:\d+[^\W\d_]*)*|(?:[^\W\d_]{0,3}\d+)+[^\W\d_]{0,3}")
_LONG_WORD = re.compile(r"[^\W\d_]{5,}")
_CAMEL = re.compile(r"[A-Za-z][a-z]*(?:[A-Z]+[a-z]*)+")  # iPhone, JavaScript, PostgreSQL, macOS


@functools.lru_cache(maxsize=65536)  # words repeat: each page is measured line by line and whole
def _reads_as_word(word: str) -> bool:
    if any(_bad_char(ch) for ch in word):
        return False
    if not any(ch.isalnum() for ch in word):
        return len(word) <= 3 or len(set(word)) == 1  # "-", "->", "......"; not symbol soup like "$%&'("
    for part in re.split(r"[\W_]+", word):
        letters = "".join(ch for ch in part if ch.isalpha())
        if letters.lower() == letters.upper():  # no cased letters (Chinese, Arabic, digits): any mix is fine
            continue
        if not _WORD_PART.fullmatch(part):
            return False
        if not (letters.islower() or letters.isupper() or letters.istitle() or len(letters) <= 2
                or _CAMEL.fullmatch(letters)):
            return False
    return True


def text_quality(text: str) -> float:
    """How much of `text` reads as text: 0.0 (garbage) .. 1.0 (clean); 1.0 when it has no words.

    The share of words that look like words (`_reads_as_word`: no control/private-use/replacement
    characters, letters cased as words are, digits only in codes), times a vowel factor for Latin
    script: words of 5+ letters in English, German, French... are 35-42% vowels (aeiouy), shifted
    glyph codes (a font without a Unicode map) ~15%. Measured: handbook, SQLite docs, two PDF manuals,
    code, parts lists, German/Russian/Chinese pages 0.99-1.0; shifted glyph codes 0.39-0.47; the CID
    case's control codes 0.0.
    Fewer than 5 words can't be judged by their shape: only unmapped glyph codes count then.
    """
    words = text.split()
    if len(words) < 5:
        chars = [ch for ch in text if not ch.isspace()]
        return 0.0 if sum(map(_bad_char, chars)) > 0.05 * len(chars) else 1.0
    share = sum(map(_reads_as_word, words)) / len(words)
    letters = "".join(_LONG_WORD.findall(text))
    latin = [base for ch in letters if (base := unicodedata.normalize("NFD", ch)[0].lower()) < "\x80"]
    if len(latin) >= 100:
        vowels = sum(ch in "aeiouy" for ch in latin) / len(latin)
        share *= min(1.0, vowels / 0.30)
    return share


def _page_warnings(status: dict[int, str], tessdata: str | None) -> list[str]:
    """Notes for users on pages not read from their text layer: "pages 2, 4 have no text layer (scanned?)"."""

    def pages(how: str) -> tuple[str, bool]:
        numbers = [n for n, h in status.items() if h == how]
        shown = ", ".join(map(str, numbers[:20])) + (", ..." if len(numbers) > 20 else "")
        return (f"page {shown}" if len(numbers) == 1 else f"pages {shown}"), len(numbers) == 1

    warnings = []
    if "blank" in status.values():
        where, one = pages("blank")
        warnings.append(f"{where} {'has' if one else 'have'} no text layer (scanned?)")
    if "scan" in status.values():
        where, one = pages("scan")
        why = "OCR found no readable text" if tessdata else NO_TESSERACT
        warnings.append(f"{where} {'is an image' if one else 'are images'} without text, not indexed: {why}")
    if "garbage" in status.values():
        where, one = pages("garbage")
        why = "OCR found no readable text either" if tessdata else f"{NO_TESSERACT} to OCR it"
        warnings.append(f"{where} {'has an' if one else 'have'} unreadable text layer "
                        f"(font without a Unicode map?), not indexed: {why}")
    if "partial" in status.values():
        where, one = pages("partial")
        why = "OCR found no readable text" if tessdata else NO_TESSERACT
        warnings.append(f"{where} {'has' if one else 'have'} lines with an unreadable text layer "
                        f"(font without a Unicode map?), left out: {why}")
    if "ocr" in status.values():
        where, one = pages("ocr")
        warnings.append(f"{where} {'was' if one else 'were'} read by OCR (Tesseract)")
    return warnings


# --- 2. tables ----------------------------------------------------------------------------------
def _with_tables(page, lines: list[_Line]) -> list[_Line]:
    """`lines` with each ruled table's lines replaced by one table line, where its first line was."""
    tables = _tables(page) if _has_rules(page) else []
    out: list[_Line] = []
    for line in lines:
        x, y = (line.bbox[0] + line.bbox[2]) / 2, (line.bbox[1] + line.bbox[3]) / 2
        table = next((t for t in tables if t.bbox[0] <= x <= t.bbox[2] and t.bbox[1] <= y <= t.bbox[3]), None)
        if table is None:
            out.append(line)
        elif table not in out:
            out.append(table)
    return out + [t for t in tables if t not in out]  # a table without text lines of its own: last


def _has_rules(page) -> bool:
    """Enough horizontal and vertical strokes for a ruled table: find_tables costs ~0.5 s a page,
    too much to run on every page of a long text PDF."""
    across = down = 0
    for path in page.get_cdrawings():
        for item in path.get("items", []):
            if item[0] == "re":
                across, down = across + 2, down + 2
            elif item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                across += abs(y1 - y0) < 1
                down += abs(x1 - x0) < 1
    return across >= 3 and down >= 2


def _tables(page) -> list[_Line]:
    """Ruled tables (PyMuPDF `find_tables`) as table lines: each row's cell texts, the header row first."""
    height = float(page.rect.height or 1.0)

    def cells(row_cells) -> list[str]:
        # Each cell's text is cut out of the page, not taken from Table.extract(), which drops the
        # spaces of PDFs that position words instead of writing spaces (HTML-to-PDF output).
        return [" ".join(page.get_text("text", clip=cell).split()) if cell else "" for cell in row_cells]

    out = []
    for number, table in enumerate(page.find_tables().tables):
        if table.col_count < 2 or table.row_count < 2:  # a box around a paragraph, not a table
            continue
        rows = [cells(row.cells) for row in table.rows]
        if table.header.external:  # a header row drawn above the ruled part
            rows.insert(0, cells(table.header.cells))
        rows = [row for row in rows if any(row)]
        if len(rows) >= 2:
            bbox = tuple(float(v) for v in table.bbox)
            top = bbox[1] / height
            out.append(_Line(" | ".join(rows[0]), 0.0, False, top, (0, -1 - number), bbox, rows=rows))
    return out


# --- 3. reading order ---------------------------------------------------------------------------
MIN_GUTTER = 8.0  # points: the narrowest white strip between two columns


def _reading_order(lines: list[_Line]) -> list[_Line]:
    """Lines in reading order: columns one after the other, whatever order the content stream used.

    A gutter is a vertical white strip that at most a fifth of the lines cross, with prose on both
    sides (`_gutter`). Lines crossing it (a title, a full-width paragraph) cut the page into bands;
    in each band the left side is read before the right, and each side is split again if it holds
    columns of its own. Inside a column lines keep the content-stream order, which is right in
    almost every PDF, so a one-column page comes back as it came. Each line's `block` gets its
    column's number, so no paragraph runs from one column into the next.
    """
    stream = {id(line): index for index, line in enumerate(lines)}
    columns = itertools.count()
    out: list[_Line] = []

    def place(group: list[_Line]) -> None:
        if not group:
            return
        gutter = _gutter(group)
        if gutter is None:
            column = next(columns)
            for line in sorted(group, key=lambda line: stream[id(line)]):
                line.block = (column, line.block[1])
                out.append(line)
            return
        left, right = gutter
        band_left: list[_Line] = []
        band_right: list[_Line] = []
        spanning: list[_Line] = []
        for line in sorted(group, key=lambda line: (line.bbox[1], stream[id(line)])):
            crosses = line.bbox[0] < left and line.bbox[2] > right
            if crosses and (band_left or band_right):  # a band ends at a spanning line
                place(band_left)
                place(band_right)
                band_left, band_right = [], []
            elif not crosses and spanning:
                place(spanning)
                spanning = []
            if crosses:
                spanning.append(line)
            elif (line.bbox[0] + line.bbox[2]) / 2 < (left + right) / 2:
                band_left.append(line)
            else:
                band_right.append(line)
        for rest in (spanning, band_left, band_right):
            place(rest)

    place(lines)
    return out


def _gutter(lines: list[_Line]) -> tuple[float, float] | None:
    """The widest white strip between columns of prose, as (left, right) x in points, or None."""
    if len(lines) < 4:
        return None
    allowed = max(2, len(lines) // 5)  # lines that may cross it: titles, full-width paragraphs
    starts, ends = sorted(line.bbox[0] for line in lines), sorted(line.bbox[2] for line in lines)
    edges = sorted({*starts, *ends})
    strips: list[tuple[float, float]] = []  # runs of elementary strips (between line edges) few lines cross
    for x0, x1 in itertools.pairwise(edges):
        # Lines crossing the strip: started at or before x0 and not ended by then.
        if bisect.bisect_right(starts, x0) - bisect.bisect_right(ends, x0) > allowed:
            continue
        if strips and strips[-1][1] == x0:
            strips[-1] = (strips[-1][0], x1)
        else:
            strips.append((x0, x1))
    strips.sort(key=lambda strip: strip[1] - strip[0], reverse=True)
    return next((strip for strip in strips if _is_gutter(lines, *strip)), None)


def _is_gutter(lines: list[_Line], left: float, right: float) -> bool:
    """A strip wide enough with prose on both sides: several lines of 3+ words filling their column,
    not mostly "Label:" lines (a form's labels and values stay side by side, read row by row)."""
    if right - left < MIN_GUTTER:
        return False
    for side in ([ln for ln in lines if ln.bbox[2] <= left], [ln for ln in lines if ln.bbox[0] >= right]):
        text = [ln for ln in side if not ln.rows]
        if len(text) < 2:
            return False
        # Compared with the side's longest line, not its extent: a side may hold several columns.
        width = max(ln.bbox[2] - ln.bbox[0] for ln in text)
        full = sum(ln.bbox[2] - ln.bbox[0] >= 0.6 * width for ln in text)
        words = sum(len(ln.text.split()) for ln in text) / len(text)
        labels = sum(ln.text.endswith(":") for ln in text)
        if words < 3 or full < len(text) / 2 or labels >= len(text) / 2:
            return False
    return True


# --- 4. navigation pages and lines --------------------------------------------------------------
_DOT_LEADER = re.compile(r"(?:\.\s?){4,}|(?:\u2026\s*){2,}")  # "....", ". . . .", "……"
_ENDS_IN_PAGE = re.compile(r"(?:^|\s|\.)(\d{1,4}|[ivxlcdm]{1,6})(?:\s*[,\u2013-]\s*\d{1,4})*$", re.I)
_NAV_TITLE = re.compile(r"(table of )?contents|index|inhalt(sverzeichnis)?|sommaire|table des mati[eè]res|"
                        r"[íi]ndice|содержание|оглавление|目录|目次", re.I)


def _drop_navigation(pages: list[list[_Line]]) -> None:
    """Leave out table-of-contents and index pages whole, and dot-leader lines ("Setup ..... 12")
    anywhere: they repeat headings next to numbers and would win searches for those headings.

    A page is navigation when half its lines end in page numbers and it has dot leaders on 30% of
    its lines, a "Contents"/"Index" title, or follows a navigation page (an index runs on).
    """
    previous = False
    for lines in pages:
        text = [line for line in lines if not line.rows]
        leaders = [line for line in text if _DOT_LEADER.search(line.text)]
        entries = [line for line in text if _ENDS_IN_PAGE.search(line.text) or _DOT_LEADER.search(line.text)]
        titled = any(_NAV_TITLE.fullmatch(line.text.strip(" :")) for line in text[:3])
        navigation = len(text) >= 3 and len(entries) >= len(text) / 2 and (
            len(leaders) >= 0.3 * len(text) or titled or previous)
        previous = navigation
        if navigation:
            lines.clear()
        else:
            lines[:] = [line for line in lines if line.rows or not _is_leader_line(line.text)]


def _is_leader_line(text: str) -> bool:
    """A dot-leader line ending in a page number: "Setup ......... 12"."""
    return bool(_DOT_LEADER.search(text) and _ENDS_IN_PAGE.search(text))


# --- 5. headings, running lines, paragraphs -----------------------------------------------------
def _extend_heading(builder: _Builder, line: _Line) -> bool:
    """A heading wrapped over two lines: append the second line to the heading just emitted."""
    last = builder.blocks[-1] if builder.blocks else None
    if not (line.continues_heading and last and last.kind == "heading" and last.level == line.heading_level):
        return False
    if _norm(line.text) not in _norm(last.text):  # an outline title may already hold the whole heading
        last.text = f"{last.text} {line.text}"
        builder.rename_last_heading(last.text)
    return True


def _drop_running_lines(pages: list[list[_Line]]) -> None:
    """Drop page numbers and running headers/footers (top/bottom lines recurring on >=50% of pages)."""

    def key(line: _Line) -> str:
        return re.sub(r"\d+", "#", line.text.lower())  # "Page 3 of 10" and "Page 4 of 10" are one header

    def zone(lines: list[_Line]) -> list[_Line]:
        # The two top and two bottom lines, if they sit in the page margins (outer 12% of the height).
        by_y = sorted((line for line in lines if not line.rows), key=lambda line: line.y0)
        ends = by_y[:2] + by_y[-2:] if len(by_y) > 4 else by_y
        return [line for line in ends if line.y0 < 0.12 or line.y0 > 0.88]

    text_pages = [lines for lines in pages if lines]
    counts = Counter(k for lines in text_pages for k in {key(line) for line in zone(lines)})
    threshold = max(2, (len(text_pages) + 1) // 2)
    for lines in text_pages:
        drop = {
            id(line)
            for line in zone(lines)
            if _PAGE_NUMBER.match(line.text) or (len(text_pages) > 1 and counts[key(line)] >= threshold)
        }
        lines[:] = [line for line in lines if id(line) not in drop]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _same_title(line_text: str, title: str) -> bool:
    """Outline titles and page text differ in numbering and punctuation ("1. Intro" vs "1 Intro")."""
    got, wanted = _norm(line_text), _norm(title)
    if not got or not wanted:
        return False
    similar_length = min(len(got), len(wanted)) >= 0.6 * max(len(got), len(wanted))
    return got == wanted or (similar_length and (got in wanted or wanted in got))


def _mark_headings(pages: list[list[_Line]], toc: list) -> dict[int, list[tuple[int, str]]]:
    """Set `heading_level` on heading lines; return outline entries that matched no line, by page."""
    unmatched: dict[int, list[tuple[int, str]]] = {}
    outline_styles: dict[tuple[float, bool], int] = {}  # (size, bold) of outline headings -> level
    for level, title, page_number, *_ in toc:
        if not 1 <= page_number <= len(pages) or not _norm(title):
            continue
        for line in pages[page_number - 1]:
            if not line.heading_level and not line.rows and _same_title(line.text, title):
                line.heading_level = min(level, 6)
                line.text = title.strip()  # the outline's spelling, e.g. with its numbering
                style = (line.size, line.bold)
                outline_styles[style] = min(outline_styles.get(style, 6), line.heading_level)
                break
        else:
            unmatched.setdefault(page_number, []).append((min(level, 6), title))
    _mark_font_headings(pages, outline_styles if toc else None)
    return unmatched


def _mark_font_headings(pages: list[list[_Line]],
                        outline_styles: dict[tuple[float, bool], int] | None) -> None:
    """Headings from fonts: lines noticeably larger than the body, or short bold lines alone in a block.

    With an outline, only lines styled like the outline's own headings are added (outlines often
    skip subsections); without one, larger sizes give higher levels.
    """
    weights: Counter = Counter()
    for lines in pages:
        for line in lines:
            if not line.rows:
                weights[line.size] += len(line.text)
    if not weights:
        return
    body = _weighted_median(weights)

    def looks_like_heading_text(line: _Line, max_words: int) -> bool:
        words = len(line.text.split())
        return 0 < words <= max_words and re.search(r"[A-Za-z]", line.text) is not None

    big_sizes = {
        line.size
        for lines in pages
        for line in lines
        if line.size >= body * 1.15 and line.size - body >= 1 and looks_like_heading_text(line, 20)
    }
    levels = {size: index + 1 for index, size in enumerate(sorted(big_sizes, reverse=True)[:5])}
    if outline_styles is not None:
        for lines in pages:
            for line in lines:
                style = (line.size, line.bold)
                if not line.heading_level and style in outline_styles and line.size >= body * 1.15:
                    line.heading_level = outline_styles[style] if looks_like_heading_text(line, 20) else 0
    else:
        _mark_styled_headings(pages, body, levels, looks_like_heading_text)
    for lines in pages:  # the second line of a wrapped heading: same block, same level
        for previous, line in zip(lines, lines[1:]):
            same_heading = previous.heading_level == line.heading_level and previous.block == line.block
            line.continues_heading = bool(line.heading_level and same_heading)


def _mark_styled_headings(pages: list[list[_Line]], body: float,
                          levels: dict[float, int], looks_like) -> None:
    """Without an outline: larger sizes are higher levels; short bold body-size lines come last."""
    for lines in pages:
        block_lines = Counter(line.block for line in lines)
        for line in lines:
            if line.size in levels and looks_like(line, 20):
                line.heading_level = levels[line.size]
            elif (
                line.bold
                and abs(line.size - body) <= 1
                and block_lines[line.block] == 1  # a bold line alone in its block, not bold prose
                and looks_like(line, 12)
                and not line.text.endswith((".", ",", ":", ";"))
            ):
                line.heading_level = len(levels) + 1


def _weighted_median(weights: Counter) -> float:
    """The body font size: the median size over all characters."""
    half, seen = sum(weights.values()) / 2, 0
    for size in sorted(weights):
        seen += weights[size]
        if seen >= half:
            return size
    return max(weights)


def _emit_paragraph(builder: _Builder, para: list[_Line], page: int) -> None:
    """Join a paragraph's lines, undoing end-of-line hyphenation ("configu-" + "ration")."""
    if not para:
        return
    text = para[0].text
    for line in para[1:]:
        if re.search(r"[A-Za-z]-$", text) and line.text[:1].islower():
            text = text[:-1] + line.text
        elif text.endswith("\u00ad"):  # soft hyphen
            text = text[:-1] + line.text
        else:
            text = f"{text} {line.text}"
    builder.add(text, "paragraph", page=page)
    para.clear()
