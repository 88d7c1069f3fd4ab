"""Turn one file (PDF, Markdown, HTML or plain text) into a `ParsedDocument` of structural blocks.

    parse_file(Path("handbook.pdf"), max_bytes=100 * 2**20) -> ParsedDocument

Every block carries the heading path above it, so the chunker can keep sections apart and cite
"Deploys > Rollbacks"; PDF blocks also carry their 1-based physical page. Anything that cannot be
ingested raises `ParseError` whose message is shown to users as is ("encrypted PDF (password
required)", "unsupported file type '.png'", ...).
"""

from __future__ import annotations

import re
from pathlib import Path

from storage.documents import Block, ParsedDocument, ParseError

PDF_SUFFIXES = frozenset({".pdf"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst", ".log"})
OFFICE_SUFFIXES = frozenset({".docx", ".pptx", ".xlsx", ".xlsm", ".csv", ".tsv"})  # storage/office.py
SUPPORTED_SUFFIXES = PDF_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | TEXT_SUFFIXES | OFFICE_SUFFIXES

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
        from storage.pdf import parse_pdf  # imported here: pdf.py builds on this module's _Builder

        return parse_pdf(path, data)
    if suffix in OFFICE_SUFFIXES:
        from storage.office import parse_office  # imported here: office.py builds on _Builder too

        return parse_office(path, data)
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
