"""Turn one file (PDF, Markdown, HTML or plain text) into a `ParsedDocument` of structural blocks.

    parse_file(Path("handbook.pdf"), max_bytes=100 * 2**20) -> ParsedDocument

Every block carries the heading path above it, so the chunker can keep sections apart and cite
"Deploys > Rollbacks"; PDF blocks also carry their 1-based physical page. Markdown goes through
markdown-it-py's token stream, HTML through BeautifulSoup (lxml); tables of either become `table`
blocks of `cell | cell` rows that start with their header. Text files are decoded by BOM, declared
charset, UTF-8 or charset-normalizer, and `ParsedDocument.encoding` says which. Anything that cannot be
ingested raises `ParseError` whose message is shown to users as is ("encrypted PDF (password
required)", "unsupported file type '.png'", ...).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import lru_cache
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
    """Parse `path` by extension (sniffing files without one); raise `ParseError` for bad input.

    Text formats also get `encoding` (the codec used) and warnings for what decoding could not fix
    (a wrong declared charset, mojibake, U+FFFD) on top of the parser's own."""
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
    declared = _declared_charset(data) if suffix in HTML_SUFFIXES or not suffix else None
    decoded = decode_text(data, declared)
    text = decoded.text
    if suffix in MARKDOWN_SUFFIXES:
        doc = _parse_markdown(path, text)
    elif suffix in HTML_SUFFIXES or (not suffix and _HTML_START.match(text)):
        doc = _parse_html(path, text)
    else:
        doc = _parse_text(path, text)
    if not any(b.kind != "heading" for b in doc.blocks):
        raise ParseError("no text found in file")
    doc.encoding = decoded.encoding
    indexed = "\n".join(b.text for b in doc.blocks)  # judged on what is indexed, not on markup or scripts
    doc.warnings = [*decoded.warnings, *doc.warnings, *_garbled_text_warnings(indexed)]
    return doc


# A BOM names the encoding: (BOM, codec of the bytes after it, codec recorded for the whole file).
# UTF-32-LE's BOM begins like UTF-16-LE's, so it is tried first.
_BOMS = ((b"\xef\xbb\xbf", "utf-8", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32-le", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32-be", "utf-32"), (b"\xff\xfe", "utf-16-le", "utf-16"),
         (b"\xfe\xff", "utf-16-be", "utf-16"))
# Labels that browsers decode as Windows-1252 (WHATWG Encoding Standard): pages saying "iso-8859-1"
# are written by tools that mean it, curly quotes and euro sign included.
_WINDOWS_1252_LABELS = frozenset({"ascii", "us-ascii", "iso-8859-1", "iso8859-1", "iso_8859-1", "latin1",
                                  "latin-1", "l1", "cp819", "ibm819", "windows-1252", "x-cp1252"})
_WESTERN_CODECS = ("cp1252", "latin_1", "iso8859_15")  # charset-normalizer's names, the likeliest first


@dataclass
class Decoded:
    text: str
    encoding: str  # Python codec that decodes the file's whole bytes: "utf-8", "utf-8-sig", "utf-16", "cp1252"
    warnings: list[str] = field(default_factory=list)


def decode_text(data: bytes, declared: str | None = None) -> Decoded:
    """Decode a text file's bytes and say which encoding was used.

    Order: a BOM (UTF-8/16/32, as Windows tools write) > the charset an HTML/XML page `declared` >
    UTF-8 > charset-normalizer's guess (BOM-less UTF-16/32, legacy code pages; Western preferred on a
    tie). Raises ParseError for binary data, or bytes invalid in the encoding their BOM names.
    """
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom):].decode(codec), name)
            except UnicodeDecodeError as exc:
                raise ParseError(f"not valid {codec} text: {exc.reason}") from None
    warnings = []
    if declared:
        codec = _declared_codec(declared)
        if codec is None:
            warnings.append(f"declares unknown charset '{declared}'; encoding detected instead")
        else:
            try:
                return Decoded(data.decode(codec), codec)
            except UnicodeDecodeError:
                warnings.append(f"declares charset '{declared}' but is not valid {codec}; encoding detected instead")
    if b"\x00" not in data[:65536]:
        try:
            return Decoded(data.decode("utf-8"), "utf-8", warnings)
        except UnicodeDecodeError:
            pass
    text, codec = _detect(data)
    return Decoded(text, codec, warnings)




def _declared_codec(label: str) -> str | None:
    """The Python codec for a declared charset label; None if Python doesn't know it."""
    label = label.strip().lower()
    if label in _WINDOWS_1252_LABELS:
        return "cp1252"
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        return None
    # The declaration was found as ASCII bytes, so the page can't be UTF-16/32; browsers read UTF-8.
    return "utf-8" if codec.startswith(("utf-16", "utf-32")) else codec


def _declared_charset(data: bytes) -> str | None:
    """The charset an HTML/XML page declares near its start: `<meta charset>`, `<meta http-equiv=
    "Content-Type" content="...; charset=...">` or `<?xml ... encoding="..."?>` (BeautifulSoup's scan)."""
    from bs4.dammit import EncodingDetector

    return EncodingDetector.find_declared_encoding(data[:65536], is_html=True)


def _detect(data: bytes) -> tuple[str, str]:
    """(text, codec) by charset-normalizer, for bytes without BOM that aren't UTF-8."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[:1_000_000]))
    if b"\x00" in data[:65536]:
        # NUL bytes: UTF-16/32 without a BOM (every other byte of Latin text is 0), or binary data.
        matches = [m for m in matches if m.encoding.startswith(("utf_16", "utf_32"))]
        if not matches:
            raise ParseError("binary file, not text")
    best = min(matches, key=lambda m: m.chaos) if matches else None
    # On a short text several code pages read equally well; the Western one is the likeliest guess.
    # `could_be_from_charset` lists the code pages that decode these bytes to the very same text.
    western = [m for m in matches if set(_WESTERN_CODECS) & set(m.could_be_from_charset)]
    if best is not None and western and min(m.chaos for m in western) <= best.chaos + 0.05:
        best = min(western, key=lambda m: m.chaos)
    name = "latin_1"  # nothing fits: every byte is a character in Latin-1
    if best is not None:
        name = next((c for c in _WESTERN_CODECS if c in best.could_be_from_charset), best.encoding)
    codec = codecs.lookup(name).name
    text = data.decode(codec, errors="replace")
    # Any byte decodes in some code page; real legacy text has almost no C0 control characters.
    controls = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > 0.01 * min(len(text), 65536):
        raise ParseError("binary file, not text")
    return text, codec


def _garbled_text_warnings(text: str) -> list[str]:
    """Warnings for decoded text that still reads wrong: mojibake such as "Ã©" or "â€™" (UTF-8 read
    as a code page somewhere upstream; ftfy's detector) and U+FFFD left by a lossy conversion."""
    from ftfy.badness import BADNESS_RE

    warnings = []
    found = list(BADNESS_RE.finditer(text))
    if found:
        start, end = found[0].span()
        sample = _collapse(text[max(0, start - 12) : end + 12])
        warnings.append(f"text looks garbled in {len(found)} place(s), e.g. \u201c{sample}\u201d: "
                        "the file was probably converted with the wrong encoding")
    lost = len(re.findall("\ufffd+", text))
    if lost:
        warnings.append(f"{lost} run(s) of undecodable characters (U+FFFD) in the text")
    return warnings


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
_MD_BARE_MARKER = re.compile(r"\s*([-*+]|\d+[.)])")  # a list item with no text


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt
    from mdit_py_plugins.front_matter import front_matter_plugin

    # CommonMark (raw HTML on, so comments are recognised as HTML and dropped) + GFM tables.
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).use(front_matter_plugin)


def _md_inline(token) -> str:
    """An inline token's visible text: link text without targets, image alt text, no emphasis
    markers, no inline HTML tags or comments; `code` keeps its backticks (Slack shows them as code)."""
    parts = []
    for child in token.children or []:
        if child.type == "code_inline":
            parts.append(f"{child.markup}{child.content}{child.markup}")
        elif child.type in ("text", "text_special", "image"):
            parts.append(child.content)  # an image's content is its alt text
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _parse_markdown(path: Path, text: str) -> ParsedDocument:
    """Markdown via markdown-it-py's token stream: ATX and setext headings give the heading path,
    fenced/indented code is one `code` block (a `#` line in it is code), each list is one `list`
    block with one item per line, GFM tables become rows with their header, YAML front matter is
    metadata (its title becomes the document title), HTML comments are not text."""
    builder = _Builder()
    metadata: dict = {}
    warnings: list[str] = []
    items: list[str] = []  # lines of the open list, one per item ("- step", "  1. sub-step")
    depth = 0  # nesting of open lists
    rows: list[list[str]] = []  # cells of the open table; markdown tables have one header row

    def flush_items() -> None:
        builder.add("\n".join(line for line in items if not _MD_BARE_MARKER.fullmatch(line)), "list")
        items.clear()

    def add_text(text: str) -> None:  # paragraph text: part of the current list item, else a paragraph
        if depth and items:
            items[-1] = f"{items[-1]} {text}"
        elif depth:
            items.append(text)
        else:
            builder.add(text)

    tokens = _markdown().parse(text)
    for i, token in enumerate(tokens):
        kind = token.type
        if kind == "front_matter":
            metadata, warnings = _front_matter(token.content)
        elif kind == "heading_open" and not depth:
            builder.heading(_md_inline(tokens[i + 1]), int(token.tag[1]))
        elif kind == "inline" and (tokens[i - 1].type == "paragraph_open" or
                                   (tokens[i - 1].type == "heading_open" and depth)):
            add_text(_md_inline(token))  # (a heading outside lists was read at its heading_open)
        elif kind in ("bullet_list_open", "ordered_list_open"):
            depth += 1
        elif kind in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
            if not depth:
                flush_items()
        elif kind == "list_item_open":
            marker = f"{token.info}{token.markup}"  # "-" or "3." as written
            items.append("  " * (depth - 1) + marker)
        elif kind in ("fence", "code_block"):
            flush_items()  # code inside a list item ends the list block before it
            builder.add(token.content, "code")
        elif kind == "tr_open":
            rows.append([])
        elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            rows[-1].append(_collapse(_md_inline(token)))
        elif kind == "table_close":
            flush_items()
            _add_table(builder, rows, header_rows=1)
            rows = []
        elif kind == "html_block":
            flush_items()
            _add_html_fragment(builder, token.content)
    title = metadata.get("title")
    title = _collapse(str(title)) if isinstance(title, (str, int, float)) and str(title).strip() else None
    if title is None:
        title = next((b.text for b in builder.blocks if b.kind == "heading" and b.level == 1), None)
    return ParsedDocument(path, "markdown", builder.blocks, title=title, warnings=warnings, metadata=metadata)


def _front_matter(yaml_text: str) -> tuple[dict, list[str]]:
    """(metadata, warnings) from a YAML front matter block; a mapping, or nothing."""
    import yaml

    try:
        data = yaml.safe_load(yaml_text)
    except yaml.YAMLError:
        return {}, ["front matter is not valid YAML; ignored"]
    return (data, []) if isinstance(data, dict) else ({}, [])


def _add_html_fragment(builder: _Builder, html: str) -> None:
    """Raw HTML inside Markdown (a `<table>`, `<details>`, a comment) under the current heading path;
    comments, scripts and styles are not text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(["script", "style", "template", "noscript"]):
        tag.decompose()
    walker = _HtmlWalker(builder)
    walker.walk(soup.body or soup)
    walker.flush()


# --- HTML ---------------------------------------------------------------------------------------
# Never content. <form> and <aside> are judged one by one (`_parse_html`).
_HTML_DROP = ["script", "style", "nav", "noscript", "template", "svg", "iframe", "button", "select", "input",
              "textarea", "head"]
_HTML_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_HTML_BLOCKS = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "section", "article", "main",
                "figure", "figcaption", "address", "details", "summary", "center", "hr", "body", "caption",
                "fieldset", "header", "footer", "tr", "td", "th", "tbody", "thead", "aside", "form"}
_HTML_START = re.compile(r"\s*(<\?xml[^>]*>\s*)?<(!doctype html|html)", re.I)
# Class/id tokens of navigation chrome (menus, tables of contents, breadcrumbs, banners).
_HTML_CHROME = re.compile(
    r"(^|[-_])(nav|navbar|navigation|menu|mainmenu|submenu|searchmenu|sidebar|breadcrumbs?|toc|tagline|"
    r"skip-?link|cookie-?banner)($|[-_])",
    re.I,
)
# Class tokens of admonitions: docs sites put cautions and notes in <aside class="caution">.
_HTML_ADMONITION = re.compile(r"note|caution|warning|danger|important|tip|hint|admonition|callout|alert", re.I)
# Rows of a table are cut into groups of at most this many characters, each repeating the header:
# table text runs ~2.6 characters per MiniLM token, so a group is ~150 tokens, inside one 192-token chunk.
TABLE_GROUP_CHARS = 400


def _parse_html(path: Path, text: str) -> ParsedDocument:
    """HTML via BeautifulSoup (lxml): page chrome (scripts, navigation, site header/footer, search and
    sign-up forms, sidebars) is dropped; headings give the heading path; `<pre>` is code; data tables
    become rows with their header. A page wrapped in one `<form>` (ASP.NET, SharePoint) and notes or
    cautions in `<aside>` inside an article are kept."""
    from bs4 import BeautifulSoup  # imported here: only HTML ingestion pays for it

    soup = BeautifulSoup(text, "lxml")
    title_tag = soup.find("title")
    title = _collapse(title_tag.get_text()) if title_tag else None
    for tag in soup.find_all(_HTML_DROP):
        if not tag.decomposed:
            tag.decompose()
    root = soup.body or soup
    total = len(root.get_text(" ", strip=True))
    for form in soup.find_all("form"):
        # WebForms wrap the whole page body in one <form>: a form holding a heading or most of the text
        # is the page itself, not a search box or a sign-up widget.
        if not form.decomposed and not (form.find(_HTML_HEADINGS)
                                        or len(form.get_text(" ", strip=True)) >= 0.5 * total):
            form.decompose()
    for aside in soup.find_all("aside"):
        admonition = any(_HTML_ADMONITION.search(token) for token in [*aside.get("class", []), aside.get("role") or ""])
        if not aside.decomposed and not (admonition or aside.find_parent("article")):
            aside.decompose()  # a sidebar ("Related posts"), not part of the text
    for tag in soup.find_all(["header", "footer"]):
        if not tag.decomposed and not tag.find_parent(["article", "main"]):
            tag.decompose()  # page chrome, not an article's own header
    chrome = [
        tag
        for tag in soup.find_all(True)
        if tag.get("role") in ("navigation", "banner", "search")
        or any(_HTML_CHROME.search(token) for token in [*tag.get("class", []), tag.get("id") or ""])
    ]
    for tag in chrome:
        if not tag.decomposed:
            tag.decompose()

    walker = _HtmlWalker()
    walker.walk(_main_container(soup.body or soup))
    walker.flush()
    blocks = walker.builder.blocks
    if not title:
        title = next((b.text for b in blocks if b.kind == "heading"), None)
    # A page banner repeating the title before any heading would only make a tiny, useless chunk.
    blocks = [b for b in blocks if b.heading_path or b.kind == "heading" or b.text != title]
    return ParsedDocument(path, "html", blocks, title=title or None)


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


_END_BLOCK = object()  # marks, on the walker's stack, where a block element's children end


class _HtmlWalker:
    """Document-order walk: block elements end the current run of inline text, which becomes a block.

    Text is gathered from every text node, so prose sitting directly in a `<div>` or `<body>`
    (common in hand-written pages such as the SQLite docs) is kept, not only `<p>` contents. The walk
    uses an explicit stack: exported wiki pages nest inline tags thousands deep, past Python's
    recursion limit. Blocks go to `builder` (a new one unless given, e.g. Markdown's own).
    """

    def __init__(self, builder: _Builder | None = None) -> None:
        self.builder = builder or _Builder()
        self._buf: list[str] = []
        self._kinds = ["paragraph"]
        self._level = 1  # level of the last standard heading: `<h>` item headings nest below it

    def flush(self) -> None:
        self.builder.add("".join(self._buf), self._kinds[-1])
        self._buf.clear()

    def walk(self, element) -> None:
        from bs4 import CData, NavigableString, Tag

        stack = list(reversed(element.contents))
        while stack:
            node = stack.pop()
            if node is _END_BLOCK:
                self.flush()
                self._kinds.pop()
                continue
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
            elif name == "table" and not node.find([*_HTML_HEADINGS, "pre", "table"]):
                self.flush()
                rows, header_rows = _html_table_rows(node)
                if rows:
                    _add_table(self.builder, rows, header_rows)
                else:
                    self.builder.add(node.get_text(" "))
            elif name == "br":
                self._buf.append(" ")
            elif name in _HTML_BLOCKS or name == "table":  # a layout table is walked like a div
                self.flush()
                self._kinds.append("list" if name == "li" else "paragraph")
                stack.append(_END_BLOCK)
                stack.extend(reversed(node.contents))
            else:  # inline: a, b, code, span, ...
                stack.extend(reversed(node.contents))


def _html_table_rows(table) -> tuple[list[list[str]], int]:
    """(cell texts of each non-empty row, number of leading header rows: in `<thead>` or all `<th>`)."""
    rows: list[list[str]] = []
    header_rows = 0
    for tr in table.find_all("tr"):
        cells = tr.find_all(["td", "th"], recursive=False)
        texts = [_collapse(cell.get_text(" ")) for cell in cells]
        if not any(texts):
            continue
        heading = tr.find_parent("thead") is not None or all(cell.name == "th" for cell in cells)
        if heading and header_rows == len(rows):
            header_rows += 1
        rows.append(texts)
    # A table of header cells only (a key/value card of <th>s) has no header to repeat.
    return rows, header_rows if header_rows < len(rows) else 0


def _add_table(builder: _Builder, rows: list[list[str]], header_rows: int = 1) -> None:
    """Add a table as `table` blocks of `cell | cell | cell` lines, the row format grounding quotes
    whole. Rows are grouped up to TABLE_GROUP_CHARS and every group starts with the header rows, so
    a chunk holding `ci-mac-1 | macOS 15 | 8` also holds `host | os | cores`."""
    head = [" | ".join(cells) for cells in rows[:header_rows] if any(cells)]
    body = [" | ".join(cells) for cells in rows[header_rows:] if any(cells)]
    head_size = sum(len(line) + 1 for line in head)
    group: list[str] = []
    size = head_size
    for line in body:
        if group and size + len(line) + 1 > TABLE_GROUP_CHARS:
            builder.add("\n".join(head + group), "table")
            group, size = [], head_size
        group.append(line)
        size += len(line) + 1
    if head or group:
        builder.add("\n".join(head + group), "table")
