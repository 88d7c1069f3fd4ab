"""Turn Office files and delimited text (Word, PowerPoint, Excel, CSV/TSV) into a `ParsedDocument`.

    parse_office(Path("hosts.xlsx"), data) -> ParsedDocument

  * .docx  heading styles (Title, Heading 1..9) give the heading path; paragraphs and tables in
           document order; no pages (Word paginates only when it renders).
  * .pptx  one section per slide: the slide title is its heading, `Block.page` is the slide number
           (citations say "p. 3" for slide 3); text boxes, tables and speaker notes ("Speaker notes: …").
  * .xlsx  one section per sheet, headed by the sheet name; cached values, not formulas.
  * .csv / .tsv  one table; the delimiter is sniffed (",", ";", tab, "|") unless the name says tab.

Every table becomes `kind="table"` blocks of `cell | cell | cell` lines whose first line is the header
row: a long table is cut into groups of rows, each group repeating the header, so that a chunk holding
`ci-mac-1 | macOS 15 | 8` also holds `host | os | cores`. Anything unreadable raises `ParseError` with a
user-facing reason ("not a valid Word document: damaged or truncated file"). Called by
`storage.parsing.parse_file`, which has already checked the size limit.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from storage.documents import ParsedDocument, ParseError
from storage.parsing import _Builder, _collapse, decode_text

# A table group (header + rows) stays under one chunk: table text runs ~2.6 characters per MiniLM token,
# so 400 characters is ~150 tokens, under the default 192-token chunk, and two full groups never share one.
TABLE_GROUP_CHARS = 400
MAX_SHEET_ROWS = 5000  # rows indexed per sheet or CSV file; past that a sheet is a database, not a document
MAX_WORKBOOK_ROWS = 20000  # ~4,000 chunks: a few minutes of embedding on a CPU
MAX_COLUMNS = 200  # a sheet's declared width can be the whole grid (XFD) because of formatting alone
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # compound file: encrypted OOXML or old .doc/.xls/.ppt

_KINDS = {".docx": "Word document", ".pptx": "PowerPoint file", ".xlsx": "Excel workbook",
          ".xlsm": "Excel workbook", ".csv": "CSV file", ".tsv": "TSV file"}


def parse_office(path: Path, data: bytes) -> ParsedDocument:
    """Parse `data` (the bytes of `path`) by extension; raise `ParseError` for any unreadable file."""
    suffix = path.suffix.lower()
    what = _KINDS[suffix]
    if suffix not in (".csv", ".tsv") and data.startswith(_OLE_MAGIC):
        # Office wraps password-protected files in an OLE container; old binary formats are OLE too.
        raise ParseError(f"password-protected or old binary-format {what} (save it unprotected as {suffix})")
    parse = {".docx": _parse_docx, ".pptx": _parse_pptx, ".xlsx": _parse_xlsx, ".xlsm": _parse_xlsx,
             ".csv": _parse_delimited, ".tsv": _parse_delimited}[suffix]
    try:
        doc = parse(path, data)
    except ParseError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:  # Office files are zip archives; a cut one has no directory
        raise ParseError(f"not a valid {what}: damaged or truncated file") from exc
    except Exception as exc:  # the libraries raise KeyError, ValueError, lxml errors... on broken parts
        name = type(exc).__name__
        if name == "PackageNotFoundError":  # python-docx/pptx: not a zip package at all
            raise ParseError(f"not a valid {what}: damaged or truncated file") from exc
        # "file '<_io.BytesIO object at 0x7f..>' is not a Word file, content type is ...": drop the object
        reason = re.sub(r" ?'<_io\.BytesIO object at 0x[0-9a-f]+>'", "", str(exc))
        raise ParseError(f"not a valid {what}: {name}: {reason}") from exc
    if not any(b.kind != "heading" for b in doc.blocks):
        raise ParseError("no text found in file")
    return doc


# --- tables -------------------------------------------------------------------------------------
def _add_table(builder: _Builder, rows: Iterable[Iterable[str]], page: int | None = None) -> None:
    """Add a grid of cell texts (first row = header) as table blocks that each start with the header.

    Empty rows and all-empty columns are dropped. Leading rows with a single cell in a wider table (a
    title typed above it, or merged across it) become paragraphs; a one-column table becomes a list.
    """
    grid = [[_collapse(cell) for cell in row] for row in rows]
    grid = [row for row in grid if any(row)]
    if not grid:
        return
    width = max(len(row) for row in grid)
    used = [c for c in range(width) if any(c < len(row) and row[c] for row in grid)]
    grid = [_trim([row[c] if c < len(row) else "" for c in used]) for row in grid]
    while len(grid) > 1 and sum(map(bool, grid[0])) == 1 and len(grid[0]) < len(used):
        builder.add(next(cell for cell in grid.pop(0) if cell), page=page)
    if len(used) < 2:
        builder.add("\n".join(row[0] for row in grid if row), "list", page=page)
        return
    head = " | ".join(grid[0])
    group: list[str] = []
    size = len(head)
    for row in grid[1:]:
        line = " | ".join(row)
        if group and size + 1 + len(line) > TABLE_GROUP_CHARS:
            builder.add("\n".join([head, *group]), "table", page=page)
            group, size = [], len(head)
        group.append(line)
        size += 1 + len(line)
    builder.add("\n".join([head, *group]), "table", page=page)


def _trim(row: list[str]) -> list[str]:
    """Drop trailing empty cells (a short row is not padded with " |  | ")."""
    end = len(row)
    while end and not row[end - 1]:
        end -= 1
    return row[:end]


# --- Word ---------------------------------------------------------------------------------------
def _parse_docx(path: Path, data: bytes) -> ParsedDocument:
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    builder = _Builder()
    items: list[str] = []  # consecutive list paragraphs become one list block, one item per line
    title = None

    def flush_list() -> None:
        builder.add("\n".join(items), "list")
        items.clear()

    for item in document.iter_inner_content():  # paragraphs and tables in document order
        if isinstance(item, Table):
            flush_list()
            _add_table(builder, (_docx_row(row.cells) for row in item.rows))
            continue
        text = _collapse(item.text)
        level, style = _heading_level(item.style), (item.style.name if item.style is not None else "") or ""
        if level:
            flush_list()
            builder.heading(text, level)
            if level == 1 and title is None:
                title = text or None
        elif style.lower().startswith("list") and text:  # List Paragraph, List Bullet, List Number 2...
            items.append(text)
        else:
            flush_list()
            builder.add(text)
    flush_list()
    title = title or _collapse(document.core_properties.title or "") or None
    title = title or next((b.text for b in builder.blocks if b.kind == "heading"), None)
    return ParsedDocument(path, "docx", builder.blocks, title=title)


def _docx_row(cells) -> list[str]:
    """Cell texts of one row; a horizontally merged cell repeats in every column it spans (python-docx
    yields the same cell object for each), except one spanning the whole row: that is a title, one cell."""
    if len(cells) > 1 and all(cell is cells[0] for cell in cells):
        return [cells[0].text]
    return [cell.text for cell in cells]


def _heading_level(style) -> int:
    """Title -> 1, Heading n -> n + 1; a custom style based on a heading style inherits its level."""
    for _ in range(5):  # a few hops up the based-on chain is plenty; it can be cyclic in broken files
        if style is None:
            return 0
        name = (style.name or "").strip().lower()
        if name == "title":
            return 1
        match = re.fullmatch(r"heading\s*(\d)", name)
        if match:
            return int(match.group(1)) + 1
        style = style.base_style
    return 0


# --- PowerPoint ---------------------------------------------------------------------------------
def _parse_pptx(path: Path, data: bytes) -> ParsedDocument:
    from pptx import Presentation

    presentation = Presentation(io.BytesIO(data))
    builder = _Builder()
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = _collapse(title_shape.text_frame.text) if title_shape is not None else ""
        builder.heading(title or f"Slide {number}", 1, page=number)
        for shape in _reading_order(slide.shapes):
            if title_shape is None or shape.shape_id != title_shape.shape_id:
                _add_shape(builder, shape, number)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = _collapse(slide.notes_slide.notes_text_frame.text)
            if notes:  # marked, so an answer quoting it says where it came from
                builder.add(f"Speaker notes: {notes}", page=number)
    title = _collapse(presentation.core_properties.title or "") or next(
        (b.text for b in builder.blocks if b.kind == "heading"), None)
    return ParsedDocument(path, "pptx", builder.blocks, pages=len(presentation.slides), title=title)


def _reading_order(shapes) -> list:
    """Top to bottom, then left to right (the shape tree is z-order, not reading order)."""
    return sorted(shapes, key=lambda shape: (shape.top or 0, shape.left or 0))


def _add_shape(builder: _Builder, shape, page: int) -> None:
    from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        for child in _reading_order(shape.shapes):
            _add_shape(builder, child, page)
    elif shape.is_placeholder and shape.placeholder_format.type in (
        PP_PLACEHOLDER.SLIDE_NUMBER, PP_PLACEHOLDER.FOOTER, PP_PLACEHOLDER.DATE
    ):
        return  # the same on every slide: noise for retrieval
    elif shape.has_table:
        _add_table(builder, ([cell.text for cell in row.cells] for row in shape.table.rows), page=page)
    elif shape.has_text_frame:
        lines = [_collapse(p.text) for p in shape.text_frame.paragraphs]
        lines = [line for line in lines if line]
        # Several paragraphs in one box are bullets: keep one per line.
        builder.add("\n".join(lines), "list" if len(lines) > 1 else "paragraph", page=page)


# --- Excel --------------------------------------------------------------------------------------
def _parse_xlsx(path: Path, data: bytes) -> ParsedDocument:
    import openpyxl

    # read_only streams rows instead of building the whole grid; data_only gives the values Excel
    # cached for formulas (a workbook never saved by Excel has none: those cells read as empty).
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    builder = _Builder()
    warnings: list[str] = []
    budget = MAX_WORKBOOK_ROWS
    try:
        for sheet in workbook.worksheets:
            if not hasattr(sheet, "iter_rows"):  # a chart sheet
                continue
            if budget == 0:
                warnings.append(f"sheet '{sheet.title}' not indexed: over {MAX_WORKBOOK_ROWS} rows in the workbook")
                continue
            width = sheet.max_column or MAX_COLUMNS
            if width > MAX_COLUMNS:
                warnings.append(f"sheet '{sheet.title}': only the first {MAX_COLUMNS} columns indexed")
            rows = _capped(([_cell_text(cell) for cell in row]
                            for row in sheet.iter_rows(max_col=min(width, MAX_COLUMNS))),
                           min(MAX_SHEET_ROWS, budget), f"sheet '{sheet.title}': ", warnings)
            budget -= len(rows)
            if rows:
                builder.heading(sheet.title, 1)
                _add_table(builder, rows)
    finally:
        workbook.close()  # read-only workbooks keep the archive open until closed
    return ParsedDocument(path, "xlsx", builder.blocks, title=None, warnings=warnings)


def _cell_text(cell) -> str:
    """A cell's value as Excel shows it, roughly: 8 not 8.0, 25% not 0.25, dates without midnight."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(" ", "minutes")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, float):
        if "%" in (cell.number_format or ""):
            return f"{value * 100:.10g}%"
        return str(int(value)) if value.is_integer() else f"{value:.10g}"
    return str(value)


def _capped(rows: Iterable[list[str]], limit: int, where: str, warnings: list[str]) -> list[list[str]]:
    """The first `limit` non-empty rows (the header counts); a warning, prefixed by `where`, when more
    were left out. Stops reading there: a million-row export is not read to the end."""
    kept: list[list[str]] = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(kept) == limit:
            warnings.append(f"{where}only the first {limit} rows indexed")
            break
        kept.append(row)
    return kept


# --- CSV / TSV ----------------------------------------------------------------------------------
def _parse_delimited(path: Path, data: bytes) -> ParsedDocument:
    decoded = decode_text(data)  # BOMs, UTF-16 and legacy code pages as for any text file
    text = decoded.text
    if path.suffix.lower() == ".tsv":
        dialect: type[csv.Dialect] = csv.excel_tab
    else:
        try:  # European exports use ";", some tools tab or "|"; the Sniffer also finds the quote char
            dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")
        except csv.Error:  # one column, or too irregular to tell: the standard comma
            dialect = csv.excel
    warnings: list[str] = list(decoded.warnings)
    try:
        rows = _capped(csv.reader(io.StringIO(text, newline=""), dialect), MAX_SHEET_ROWS, "", warnings)
    except csv.Error as exc:
        raise ParseError(f"not a valid {_KINDS[path.suffix.lower()]}: {exc}") from exc
    builder = _Builder()
    _add_table(builder, rows)
    return ParsedDocument(path, path.suffix.lower().lstrip("."), builder.blocks, warnings=warnings,
                          encoding=decoded.encoding)
