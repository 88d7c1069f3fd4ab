"""Turn one file (PDF, Markdown, HTML or plain text) into a `ParsedDocument` of structural blocks.

    parse_file(Path("handbook.pdf"), max_bytes=100 * 2**20) -> ParsedDocument

Every block carries the heading path above it, so the chunker can keep sections apart and cite
"Deploys > Rollbacks"; PDF blocks also carry their 1-based physical page. Anything that cannot be
ingested raises `ParseError` whose message is shown to users as is ("encrypted PDF (password
required)", "unsupported file type '.png'", ...).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from storage.documents import Block, ParsedDocument, ParseError

PDF_SUFFIXES = frozenset({".pdf"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst", ".log"})
SUPPORTED_SUFFIXES = PDF_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | TEXT_SUFFIXES

_MB = 1024 * 1024


def parse_file(path: Path, max_bytes: int) -> ParsedDocument:
    """Parse `path` by extension (sniffing files without one); raise `ParseError` for bad input."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise ParseError("empty file")
    if size > max_bytes:
        raise ParseError(f"file is {size / _MB:.1f} MB, over the {max_bytes / _MB:g} MB limit")
    suffix = path.suffix.lower()
    if suffix and suffix not in SUPPORTED_SUFFIXES:
        raise ParseError(f"unsupported file type '{path.suffix}'")
    data = path.read_bytes()
    if suffix in PDF_SUFFIXES or (not suffix and data.startswith(b"%PDF-")):
        return _parse_pdf(path, data)
    text = _decode_text(data)
    if suffix in MARKDOWN_SUFFIXES:
        doc = _parse_markdown(path, text)
    elif suffix in HTML_SUFFIXES or (not suffix and re.match(r"\s*<(!doctype html|html)", text, re.I)):
        doc = _parse_html(path, text)
    else:
        doc = _parse_text(path, text)
    if not any(b.kind != "heading" for b in doc.blocks):
        raise ParseError("no text found in file")
    return doc


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def _decode_text(data: bytes) -> str:
    """Text in any common encoding: a BOM names it (UTF-8/16/32, as Windows tools write), else UTF-8,
    else charset-normalizer's best guess among legacy code pages; binary data is refused."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding.replace("-sig", ""))
            except UnicodeDecodeError as exc:
                raise ParseError(f"not valid {encoding} text: {exc.reason}") from None
    if b"\x00" in data[:65536]:
        raise ParseError("binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[:1_000_000]))
    best = min(matches, key=lambda m: m.chaos) if matches else None
    # On a short text several code pages read equally well; the Western one is the likeliest guess.
    western = [m for m in matches if m.encoding in ("cp1252", "latin_1", "iso8859_15")]
    if best is not None and western and min(m.chaos for m in western) <= best.chaos + 0.05:
        best = min(western, key=lambda m: m.chaos)
    text = data.decode(best.encoding, errors="replace") if best is not None else data.decode("latin-1")
    # Any byte decodes in some code page; real legacy text has almost no C0 control characters.
    controls = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > 0.01 * min(len(text), 65536):
        raise ParseError("binary file, not text")
    return text


def _collapse(text: str) -> str:
    return " ".join(text.split())


class _Builder:
    """Collects blocks in reading order and keeps the heading stack that gives their paths."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._stack: list[tuple[int, str]] = []

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._stack)

    def heading(self, text: str, level: int, page: int | None = None) -> None:
        text = _collapse(text)
        if not text:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        # A heading's own path is its ancestors ("headings above this block").
        self.blocks.append(Block(text, "heading", page=page, heading_path=self.path, level=level))
        self._stack.append((level, text))

    def rename_last_heading(self, text: str) -> None:
        self._stack[-1] = (self._stack[-1][0], text)

    def add(self, text: str, kind: str = "paragraph", page: int | None = None) -> None:
        text = text.strip() if kind in ("code", "table", "list") else _collapse(text)
        if text:
            self.blocks.append(Block(text, kind, page=page, heading_path=self.path))


# --- plain text ---------------------------------------------------------------------------------
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_LISTY_LINE = re.compile(r"^\s*([-*+\u2022]|\d+[.)])\s+|^\s{2,}\S")


def _parse_text(path: Path, text: str) -> ParsedDocument:
    builder = _Builder()
    rst_levels: list[str] = []  # reStructuredText: heading level = order of first underline char
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [line.rstrip() for line in para.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        underlined = len(lines) == 2 and _RST_UNDERLINE.match(lines[1])
        if underlined and len(lines[1].strip()) >= len(lines[0].strip()):
            char = lines[1].strip()[0]
            if char not in rst_levels:
                rst_levels.append(char)
            builder.heading(lines[0], min(rst_levels.index(char) + 1, 6))
        elif len(lines) > 1 and sum(bool(_LISTY_LINE.match(line)) for line in lines) > len(lines) / 2:
            builder.add("\n".join(lines), "list")  # keep one item per line
        else:
            builder.add(" ".join(lines))
    return ParsedDocument(path, "text", builder.blocks)


# --- Markdown -----------------------------------------------------------------------------------
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")


def _md_inline(text: str) -> str:
    """Drop link targets and bold markers, which only add noise to embeddings."""
    return _MD_STRONG.sub(r"\2", _MD_LINK.sub(r"\1", text))


def _parse_markdown(path: Path, text: str) -> ParsedDocument:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    title = None
    if lines and lines[0].strip() == "---":  # YAML front matter: skipped, but its title is kept
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                for line in lines[1:end]:
                    match = re.match(r"^title\s*:\s*(.+?)\s*$", line)
                    if match:
                        title = match.group(1).strip("'\"")
                lines = lines[end + 1 :]
                break

    builder = _Builder()
    buf: list[str] = []
    buf_kind = "paragraph"

    def flush() -> None:
        nonlocal buf_kind
        if buf:
            joiner = " " if buf_kind == "paragraph" else "\n"
            builder.add(_md_inline(joiner.join(buf)), buf_kind)
        buf.clear()
        buf_kind = "paragraph"

    fence: str | None = None
    for line in lines:
        if fence is not None:  # inside a fenced code block: nothing is markup, not even '#'
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                builder.add("\n".join(buf), "code")
                buf.clear()
                fence = None
            else:
                buf.append(line)
            continue
        stripped = line.strip()
        fence_match = _FENCE.match(line)
        if fence_match:
            flush()
            fence = fence_match.group(1)
            continue
        heading = _ATX.match(line)
        if heading:
            flush()
            builder.heading(_md_inline(heading.group(2) or ""), len(heading.group(1)))
        elif not stripped:
            flush()
        elif buf_kind == "paragraph" and len(buf) == 1 and re.fullmatch(r"=+|-+", stripped):
            level = 1 if stripped[0] == "=" else 2  # setext heading: text underlined by === or ---
            heading_text = buf.pop()
            builder.heading(_md_inline(heading_text), level)
        elif stripped.startswith("|"):
            if buf_kind != "table":
                flush()
                buf_kind = "table"
            if not re.fullmatch(r"[|:\-\s]+", stripped):  # skip the |---|---| separator row
                buf.append(" | ".join(_collapse(c) for c in stripped.strip("|").split("|")))
        elif _LIST_ITEM.match(line):
            if buf_kind != "list":
                flush()
                buf_kind = "list"
            buf.append(stripped)
        elif buf_kind == "list" and buf:
            buf[-1] += " " + stripped  # continuation of the previous item
        else:
            if buf_kind != "paragraph":
                flush()
            buf.append(stripped)
    if fence is not None:  # unterminated fence: keep the code rather than lose it
        builder.add("\n".join(buf), "code")
        buf.clear()
    flush()
    if title is None:
        title = next((b.text for b in builder.blocks if b.kind == "heading" and b.level == 1), None)
    return ParsedDocument(path, "markdown", builder.blocks, title=title)


# --- HTML ---------------------------------------------------------------------------------------
_HTML_DROP = ["script", "style", "nav", "aside", "noscript", "form", "template", "svg", "iframe",
              "button", "select", "input", "textarea", "head"]
_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_HTML_BLOCKS = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "section", "article", "main",
                "figure", "figcaption", "address", "details", "summary", "center", "hr", "body", "caption",
                "fieldset", "header", "footer", "tr", "td", "th", "tbody", "thead"}
# Class/id tokens of navigation chrome (menus, tables of contents, breadcrumbs, banners).
_HTML_CHROME = re.compile(
    r"(^|[-_])(nav|navbar|navigation|menu|mainmenu|submenu|searchmenu|sidebar|breadcrumbs?|toc|tagline|"
    r"skip-?link|cookie-?banner)($|[-_])",
    re.I,
)


def _parse_html(path: Path, text: str) -> ParsedDocument:
    from bs4 import BeautifulSoup  # imported here: only HTML ingestion pays for it

    soup = BeautifulSoup(text, "lxml")
    title_tag = soup.find("title")
    title = _collapse(title_tag.get_text()) if title_tag else None
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(["header", "footer"]):
        if not tag.find_parent(["article", "main"]):  # page chrome, not an article's own header
            tag.decompose()
    chrome = [
        tag
        for tag in soup.find_all(True)
        if tag.get("role") in ("navigation", "banner", "search")
        or any(_HTML_CHROME.search(token) for token in [*tag.get("class", []), tag.get("id") or ""])
    ]
    for tag in chrome:
        if not tag.decomposed:
            tag.decompose()

    root = soup.body or soup
    container = _main_container(root)
    walker = _HtmlWalker()
    warnings: list[str] = []
    try:
        walker.walk(container)
        walker.flush()
        blocks = walker.builder.blocks
    except RecursionError:
        # Generated pages can nest thousands of wrappers; their structure is lost, their text is not:
        # one paragraph per line of visible text, and the file is reported, not failed.
        flat = _Builder()
        for line in container.get_text("\n").splitlines():
            if line.strip():
                flat.add(_collapse(line))
        blocks = flat.blocks
        warnings.append("HTML nested too deeply to follow its structure; indexed as plain text")
    if not title:
        title = next((b.text for b in blocks if b.kind == "heading"), None)
    # A page banner repeating the title before any heading would only make a tiny, useless chunk.
    blocks = [b for b in blocks if b.heading_path or b.kind == "heading" or b.text != title]
    return ParsedDocument(path, "html", blocks, title=title or None, warnings=warnings)


def _main_container(root):
    """The main content element if the page marks one and it holds most of the text, else `root`."""
    total = len(root.get_text(" ", strip=True))
    articles = root.find_all("article")
    candidates = [
        root.find("main"),
        root.find(attrs={"role": "main"}),
        articles[0] if len(articles) == 1 else None,
        root.find(id=re.compile(r"^(content|main-content|main|bodyContent|mw-content-text)$")),
        root.find(class_=re.compile(r"^(content|main-content|post-content|entry-content|document)$")),
    ]
    for candidate in candidates:
        # Guard against a small "content" box: the main text must not be lost.
        if candidate is not None and len(candidate.get_text(" ", strip=True)) >= 0.5 * total:
            return candidate
    return root


class _HtmlWalker:
    """Depth-first walk: block elements end the current run of inline text, which becomes a block.

    Text is gathered from every text node, so prose sitting directly in a `<div>` or `<body>`
    (common in hand-written pages such as the SQLite docs) is kept, not only `<p>` contents.
    """

    def __init__(self) -> None:
        self.builder = _Builder()
        self._buf: list[str] = []
        self._kinds = ["paragraph"]
        self._level = 1  # level of the last standard heading: `<h>` item headings nest below it

    def flush(self) -> None:
        self.builder.add("".join(self._buf), self._kinds[-1])
        self._buf.clear()

    def walk(self, element) -> None:
        from bs4 import CData, NavigableString, Tag

        for node in element.children:
            if isinstance(node, NavigableString):
                if type(node) in (NavigableString, CData):  # not comments, doctypes, ...
                    self._buf.append(str(node))
                continue
            if not isinstance(node, Tag):
                continue
            name = node.name
            if name in _HTML_HEADINGS:
                self.flush()
                self._level = int(name[1])
                self.builder.heading(node.get_text(" "), self._level)
            elif name == "h":
                # Non-standard, hidden `<h>` markers title each item of a reference list (SQLite's
                # pragma page has 70+): as subsections they give each item's chunks its own heading.
                self.flush()
                self.builder.heading(node.get_text(" "), min(self._level + 1, 6))
            elif name == "pre":
                self.flush()
                self.builder.add(node.get_text().strip("\n"), "code")
            elif name == "table" and not node.find(["h1", "h2", "h3", "h4", "h5", "h6", "p", "pre"]):
                self.flush()
                self.builder.add(_table_text(node), "table")
            elif name == "br":
                self._buf.append(" ")
            elif name in _HTML_BLOCKS or name == "table":  # a layout table is walked like a div
                self.flush()
                self._kinds.append("list" if name == "li" else "paragraph")
                self.walk(node)
                self.flush()
                self._kinds.pop()
            else:  # inline: a, b, code, span, ...
                self.walk(node)


def _table_text(table) -> str:
    rows = []
    for tr in table.find_all("tr"):
        cells = [_collapse(cell.get_text(" ")) for cell in tr.find_all(["td", "th"])]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows) if rows else _collapse(table.get_text(" "))


# --- PDF ----------------------------------------------------------------------------------------
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


def _parse_pdf(path: Path, data: bytes) -> ParsedDocument:
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
