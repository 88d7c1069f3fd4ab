"""Turn a PDF into a `ParsedDocument`: lines in reading order, headings from the outline and fonts.

    parse_pdf(Path("handbook.pdf"), data) -> ParsedDocument  (blocks carry their 1-based page)

Raises `ParseError` for encrypted, broken or text-less PDFs. Called by `storage.parsing.parse_file`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from storage.documents import ParsedDocument, ParseError
from storage.parsing import _Builder


@dataclass
class _Line:
    text: str
    size: float
    bold: bool
    y0: float  # top of the line as a fraction of the page height (0 = top edge)
    block: int
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
        try:
            pages = [_pdf_lines(page.get_text("dict", flags=flags)) for page in doc]
            toc = doc.get_toc()
        except Exception as exc:
            raise ParseError(f"not a valid PDF: {exc}") from exc
        metadata_title = (doc.metadata or {}).get("title") or None

    empty = [number for number, lines in enumerate(pages, 1) if not lines]
    if len(empty) == len(pages):
        raise ParseError("PDF has no extractable text (scanned images only?)")
    warnings = []
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
        warnings.append(f"page {shown} has no text layer (scanned?)" if len(empty) == 1
                        else f"pages {shown} have no text layer (scanned?)")

    _drop_running_lines(pages)
    pending_toc = _mark_headings(pages, toc)
    builder = _Builder()
    for number, lines in enumerate(pages, 1):
        for level, title in pending_toc.get(number, []):  # outline entries not found in the page text
            builder.heading(title, level, page=number)
        para: list[_Line] = []
        for line in lines:
            if line.heading_level:
                _emit_paragraph(builder, para, number)
                if not _extend_heading(builder, line):
                    builder.heading(line.text, line.heading_level, page=number)
            elif para and (line.block != para[-1].block or abs(line.size - para[-1].size) > 1):
                _emit_paragraph(builder, para, number)
                para.append(line)
            else:
                para.append(line)
        _emit_paragraph(builder, para, number)
    title = metadata_title or next((b.text for b in builder.blocks if b.kind == "heading"), None)
    return ParsedDocument(path, "pdf", builder.blocks, pages=len(pages), title=title, warnings=warnings)


def _extend_heading(builder: _Builder, line: _Line) -> bool:
    """A heading wrapped over two lines: append the second line to the heading just emitted."""
    last = builder.blocks[-1] if builder.blocks else None
    if not (line.continues_heading and last and last.kind == "heading" and last.level == line.heading_level):
        return False
    if _norm(line.text) not in _norm(last.text):  # an outline title may already hold the whole heading
        last.text = f"{last.text} {line.text}"
        builder.rename_last_heading(last.text)
    return True


def _pdf_lines(page_dict: dict) -> list[_Line]:
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
            lines.append(_Line(text, size, bool(bold), line["bbox"][1] / height, block["number"]))
    return lines


def _drop_running_lines(pages: list[list[_Line]]) -> None:
    """Drop page numbers and running headers/footers (top/bottom lines recurring on >=50% of pages)."""

    def key(line: _Line) -> str:
        return re.sub(r"\d+", "#", line.text.lower())  # "Page 3 of 10" and "Page 4 of 10" are one header

    def zone(lines: list[_Line]) -> list[_Line]:
        # The two top and two bottom lines, if they sit in the page margins (outer 12% of the height).
        by_y = sorted(lines, key=lambda line: line.y0)
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
            if not line.heading_level and _same_title(line.text, title):
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
