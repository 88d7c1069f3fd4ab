"""Unit tests for storage.parsing: PDF, Markdown, HTML and text parsing, and the refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pymupdf
import pytest

from storage.documents import ParseError
from storage.parsing import SUPPORTED_SUFFIXES, parse_file

MB = 1024 * 1024
LIMIT = 100 * MB
SQLITE_DOCS = Path("/work/shared/eval/sqlite/docs")


def body(doc) -> list[str]:
    return [b.text for b in doc.blocks if b.kind != "heading"]


def headings(doc) -> list[tuple[int, str]]:
    return [(b.level, b.text) for b in doc.blocks if b.kind == "heading"]


# --- PDF ----------------------------------------------------------------------------------------
def make_pdf(path: Path, pages: list[list[tuple[float, str, float]]], header: str | None = None,
             toc: list | None = None, page_numbers: bool = False) -> Path:
    """Each page is a list of (y, text, fontsize); text may contain newlines (one line each)."""
    doc = pymupdf.open()
    for number, items in enumerate(pages, 1):
        page = doc.new_page()  # A4-ish: 595 x 842
        if header:
            page.insert_text((72, 40), header, fontsize=9)
        for y, text, size in items:
            page.insert_text((72, y), text, fontsize=size)
        if page_numbers:
            page.insert_text((290, 810), f"Page {number} of {len(pages)}", fontsize=9)
    if toc:
        doc.set_toc(toc)
    doc.save(path)
    doc.close()
    return path


def test_pdf_font_headings_pages_header_and_hyphenation(tmp_path):
    pages = [
        [(90, "Installation", 20), (130, "Install the agent with the package manager.", 11),
         (170, "Configuration", 16), (200, "The configu-\nration file lives in /etc/agent.", 11)],
        [(90, "More text about the configuration on page two.", 11),
         (130, "Troubleshooting", 20), (160, "Restart the agent when it hangs.", 11)],
        [(90, "Final notes on the third page of the manual.", 11)],
    ]
    path = make_pdf(tmp_path / "manual.pdf", pages, header="ACME Agent Manual", page_numbers=True)
    doc = parse_file(path, LIMIT)
    assert doc.kind == "pdf" and doc.pages == 3
    assert headings(doc) == [(1, "Installation"), (2, "Configuration"), (1, "Troubleshooting")]
    text = " ".join(body(doc))
    assert "The configuration file lives in /etc/agent." in text  # hyphen joined
    assert "ACME Agent Manual" not in text  # running header dropped
    assert "Page 1 of 3" not in text and "of 3" not in text  # page numbers dropped
    by_text = {b.text: b for b in doc.blocks}
    assert by_text["More text about the configuration on page two."].page == 2
    assert by_text["More text about the configuration on page two."].heading_path == (
        "Installation",
        "Configuration",
    )
    assert by_text["Restart the agent when it hangs."].heading_path == ("Troubleshooting",)
    assert by_text["Final notes on the third page of the manual."].page == 3
    assert doc.title == "Installation"
    assert doc.warnings == []


def test_pdf_outline_gives_headings(tmp_path):
    pages = [
        [(90, "Overview", 11), (120, "This product does many things.", 11)],
        [(90, "Details", 11), (120, "Here are the details of the product.", 11)],
    ]
    toc = [[1, "Overview", 1], [2, "Details", 2]]
    doc = parse_file(make_pdf(tmp_path / "outline.pdf", pages, toc=toc), LIMIT)
    assert headings(doc) == [(1, "Overview"), (2, "Details")]
    detail = next(b for b in doc.blocks if b.text.startswith("Here are"))
    assert detail.heading_path == ("Overview", "Details") and detail.page == 2


def test_pdf_blank_page_is_a_warning(tmp_path):
    pages = [[(90, "Page one has text.", 11)], [], [(90, "Page three has text.", 11)], []]
    doc = parse_file(make_pdf(tmp_path / "scan.pdf", pages), LIMIT)
    assert doc.warnings == ["pages 2, 4 have no text layer (scanned?)"]
    assert [b.page for b in doc.blocks] == [1, 3]


def test_pdf_without_any_text_is_refused(tmp_path):
    path = make_pdf(tmp_path / "images.pdf", [[], []])
    with pytest.raises(ParseError, match="no extractable text"):
        parse_file(path, LIMIT)


def test_encrypted_pdf_is_refused(tmp_path):
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret", fontsize=11)
    path = tmp_path / "locked.pdf"
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="u")
    with pytest.raises(ParseError, match=r"encrypted PDF \(password required\)"):
        parse_file(path, LIMIT)


def test_corrupt_and_empty_pdf_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(os.urandom(2048))
    with pytest.raises(ParseError, match="not a valid PDF"):
        parse_file(corrupt, LIMIT)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match="empty file"):
        parse_file(empty, LIMIT)


# --- Markdown -----------------------------------------------------------------------------------
MARKDOWN = """---
title: "Deploy Guide"
tags: [ops]
---
# Deploys

We deploy with **Shipit**, see [the runbook](https://example.com/runbook).

## Rollbacks

```bash
# this is a comment, not a heading
shipit rollback
```

- first item
- second item
  continues here

| Step | Owner |
|------|-------|
| 1    | SRE   |

### Deep
Text under deep.

## Freezes
Freeze text.
"""


def test_markdown_structure(tmp_path):
    path = tmp_path / "deploys.md"
    path.write_text(MARKDOWN)
    doc = parse_file(path, LIMIT)
    assert doc.kind == "markdown" and doc.title == "Deploy Guide"
    assert headings(doc) == [(1, "Deploys"), (2, "Rollbacks"), (3, "Deep"), (2, "Freezes")]
    kinds = {b.kind: b for b in doc.blocks}
    assert kinds["code"].text == "# this is a comment, not a heading\nshipit rollback"
    assert kinds["code"].heading_path == ("Deploys", "Rollbacks")
    assert kinds["list"].text == "- first item\n- second item continues here"
    assert kinds["table"].text == "Step | Owner\n1 | SRE"
    assert "We deploy with Shipit, see the runbook." in body(doc)
    deep = next(b for b in doc.blocks if b.text == "Text under deep.")
    assert deep.heading_path == ("Deploys", "Rollbacks", "Deep")
    freeze = next(b for b in doc.blocks if b.text == "Freeze text.")
    assert freeze.heading_path == ("Deploys", "Freezes")
    assert "title:" not in " ".join(body(doc))  # front matter skipped


def test_markdown_title_falls_back_to_first_h1(tmp_path):
    path = tmp_path / "notes.markdown"
    path.write_text("Intro line.\n\n# Real Title\n\nBody.\n")
    doc = parse_file(path, LIMIT)
    assert doc.title == "Real Title"
    assert doc.blocks[0].heading_path == ()


# --- HTML ---------------------------------------------------------------------------------------
HTML = """<!DOCTYPE html><html><head><title>Cache Guide</title><style>p {color: red}</style>
<script>var tracking = "SECRET_JS";</script></head>
<body>
<nav><a href="/">Home</a> <a href="/search">Search</a></nav>
<header><div>Site banner text</div></header>
<div class="menu mainmenu"><ul><li>Download</li><li>Support</li></ul></div>
<div role="navigation">Skip to content</div>
<h1>Caching</h1>
<p>The cache   keeps
   hot pages in memory.</p>
<div>Loose text in a div, not in a paragraph.</div>
Bare text in the body.
<h2>Eviction</h2>
<ul><li>LRU is the default.</li><li>LFU is optional.</li></ul>
<pre>cache.evict(key)
cache.clear()</pre>
<table><tr><th>Policy</th><th>Cost</th></tr><tr><td>LRU</td><td>low</td></tr></table>
<dl><dt>TTL</dt><dd>Time to live.</dd></dl>
<aside>Related posts</aside>
<form><input name="q"> Subscribe now</form>
<footer>Copyright 2024</footer>
</body></html>"""


def test_html_drops_chrome_and_keeps_text(tmp_path):
    path = tmp_path / "cache.html"
    path.write_text(HTML)
    doc = parse_file(path, LIMIT)
    assert doc.kind == "html" and doc.title == "Cache Guide"
    assert headings(doc) == [(1, "Caching"), (2, "Eviction")]
    text = "\n".join(body(doc))
    for junk in ("SECRET_JS", "color: red", "Home", "Search", "Site banner", "Download", "Skip to content",
                 "Related posts", "Subscribe", "Copyright"):
        assert junk not in text, junk
    assert "The cache keeps hot pages in memory." in body(doc)
    assert "Loose text in a div, not in a paragraph." in body(doc)
    assert "Bare text in the body." in body(doc)
    kinds = {b.kind: b for b in doc.blocks}
    assert kinds["code"].text == "cache.evict(key)\ncache.clear()"
    assert kinds["table"].text == "Policy | Cost\nLRU | low"
    lru = next(b for b in doc.blocks if b.text == "LRU is the default.")
    assert lru.kind == "list" and lru.heading_path == ("Caching", "Eviction")
    assert "Time to live." in body(doc) and "TTL" in body(doc)


def test_html_prefers_main_container(tmp_path):
    path = tmp_path / "page.htm"
    path.write_text("<html><body><div class='promo'>Buy our stuff</div><main><h1>Doc</h1>"
                    "<p>" + "Main content sentence. " * 20 + "</p></main></body></html>")
    doc = parse_file(path, LIMIT)
    assert doc.title == "Doc"  # no <title>: first heading
    assert "Buy our stuff" not in " ".join(body(doc))


@pytest.mark.skipif(not SQLITE_DOCS.is_dir(), reason="SQLite docs corpus not present")
def test_real_sqlite_pages():
    autoinc = parse_file(SQLITE_DOCS / "autoinc.html", LIMIT)
    text = "\n".join(body(autoinc))
    assert autoinc.title == "SQLite Autoincrement"
    assert "SQLITE_FULL" in text
    assert "1. Summary" in [h for _, h in headings(autoinc)]
    for junk in ("Search Documentation", "Choose any three", "toggle_search", "Purchase"):
        assert junk not in text, junk
    memdb = parse_file(SQLITE_DOCS / "inmemorydb.html", LIMIT)
    assert "Or," in body(memdb)  # bare text between <pre> blocks is not lost
    assert any(b.kind == "code" and ":memory:" in b.text for b in memdb.blocks)
    for name in ("lang_select.html", "fts5.html"):
        page = parse_file(SQLITE_DOCS / name, LIMIT)
        words = " ".join(body(page)).split()
        assert len(words) > 500
        assert words.count("Search") < 5 and not body(page)[0].startswith("Small. Fast.")


# --- plain text and refusals ----------------------------------------------------------------------
def test_plain_text_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nwrapped over lines.\n\n\nSecond paragraph.\n")
    doc = parse_file(path, LIMIT)
    assert doc.kind == "text"
    assert body(doc) == ["First paragraph wrapped over lines.", "Second paragraph."]


def test_rst_underlined_headings(tmp_path):
    path = tmp_path / "guide.rst"
    path.write_text("Guide\n=====\n\nIntro.\n\nSetup\n-----\n\nRun it.\n")
    doc = parse_file(path, LIMIT)
    assert headings(doc) == [(1, "Guide"), (2, "Setup")]
    assert doc.blocks[-1].heading_path == ("Guide", "Setup")


def test_extensionless_files_are_sniffed(tmp_path):
    (tmp_path / "README").write_text("Just text.\n")
    assert parse_file(tmp_path / "README", LIMIT).kind == "text"
    (tmp_path / "BLOB").write_bytes(b"\x89PNG\x00\x01\x02" * 50)
    with pytest.raises(ParseError, match="binary file, not text"):
        parse_file(tmp_path / "BLOB", LIMIT)


def test_binary_content_with_text_extension_is_refused(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ParseError, match="binary file, not text"):
        parse_file(path, LIMIT)


def test_latin1_text_is_accepted(tmp_path):
    path = tmp_path / "legacy.txt"
    path.write_bytes("Caf\xe9 menu, cr\xe8me br\xfbl\xe9e.".encode("latin-1"))
    assert body(parse_file(path, LIMIT)) == ["Café menu, crème brûlée."]


@pytest.mark.parametrize("name", ["photo.png", "report.doc", "archive.ZIP"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    suffix = Path(name).suffix
    with pytest.raises(ParseError, match=f"unsupported file type '\\{suffix}'"):
        parse_file(path, LIMIT)
    assert suffix.lower() not in SUPPORTED_SUFFIXES


def test_empty_and_whitespace_only_files(tmp_path):
    (tmp_path / "empty.md").write_bytes(b"")
    with pytest.raises(ParseError, match="^empty file$"):
        parse_file(tmp_path / "empty.md", LIMIT)
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ParseError, match="no text"):
        parse_file(tmp_path / "blank.txt", LIMIT)


def test_oversize_file(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * (3 * MB))  # only the size is checked, nothing is read
    with pytest.raises(ParseError, match=r"^file is 3\.0 MB, over the 2 MB limit$"):
        parse_file(path, 2 * MB)


def test_missing_file(tmp_path):
    with pytest.raises(ParseError, match="cannot read file"):
        parse_file(tmp_path / "nope.txt", LIMIT)


def test_pdf_wrapped_heading_and_bold_heading(tmp_path):
    pages = [[(90, "Getting started with\nthe agent on Linux", 20), (160, "Body text for the section.", 11),
              (200, "Body text continues in a second paragraph.", 11)]]
    path = tmp_path / "wrapped.pdf"
    doc = pymupdf.open()
    page = doc.new_page()
    for y, text, size in pages[0]:
        page.insert_text((72, y), text, fontsize=size)
    page.insert_text((72, 260), "Requirements", fontsize=11, fontname="hebo")
    page.insert_text((72, 290), "A kernel newer than 5.4 is needed.", fontsize=11)
    doc.save(path)
    parsed = parse_file(path, LIMIT)
    assert headings(parsed) == [(1, "Getting started with the agent on Linux"), (2, "Requirements")]
    assert parsed.blocks[-1].heading_path == ("Getting started with the agent on Linux", "Requirements")


def test_html_article_header_is_kept(tmp_path):
    path = tmp_path / "post.html"
    path.write_text("<html><body><header>Site chrome</header><article><header><h1>Post title</h1></header>"
                    "<p>" + "Post body words. " * 30 + "</p></article></body></html>")
    doc = parse_file(path, LIMIT)
    assert headings(doc) == [(1, "Post title")]
    assert "Site chrome" not in " ".join(body(doc))


def test_pdf_partial_outline_adds_headings_styled_like_it(tmp_path):
    pages = [[(90, "Flights", 20), (130, "1.1 Booking", 15), (160, "Book early.", 11),
              (200, "1.2 Fares", 15), (230, "Pick the cheapest fare.", 11)]]
    toc = [[1, "Flights", 1], [2, "1.1 Booking", 1]]  # 1.2 is missing from the outline
    doc = parse_file(make_pdf(tmp_path / "partial.pdf", pages, toc=toc), LIMIT)
    assert headings(doc) == [(1, "Flights"), (2, "1.1 Booking"), (2, "1.2 Fares")]
    assert doc.blocks[-1].heading_path == ("Flights", "1.2 Fares")


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                          ("utf-32-le", b"\xff\xfe\x00\x00"), ("utf-8", b"\xef\xbb\xbf"),
                                          ("utf-8", b""), ("cp1252", b"")])
def test_text_in_any_common_encoding_reads_the_same(tmp_path, encoding, bom):
    """Windows tools write UTF-16 with a BOM and CRLF (shared/cases/utf16-text); old files use code pages."""
    text = "# Backups\r\n\r\nNightly backups run at 02:30 UTC and are kept for 14 days – café rules.\r\n"
    path = tmp_path / "runbook.md"
    path.write_bytes(bom + text.encode(encoding))
    doc = parse_file(path, max_bytes=1_000_000)
    body = " ".join(b.text for b in doc.blocks)
    assert "kept for 14 days – café rules." in body and "\x00" not in body
