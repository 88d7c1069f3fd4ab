"""Markdown through markdown-it-py (shared/cases/markdown-structure, copied to tests/data/cases): code
fences stay code, front matter is metadata, setext headings are headings, GFM tables are rows that keep
their header, HTML comments are not indexed."""

from __future__ import annotations

from pathlib import Path

from storage.chunking import chunk_document
from storage.parsing import TABLE_GROUP_CHARS, parse_file

CASE = Path(__file__).parent / "data" / "cases" / "markdown-structure" / "runbook.md"
LIMIT = 10_000_000


def headings(doc) -> list[tuple[int, str]]:
    return [(b.level, b.text) for b in doc.blocks if b.kind == "heading"]


def all_text(doc) -> str:
    return "\n".join(b.text for b in doc.blocks)


def test_hash_lines_in_every_kind_of_fence_stay_code():
    doc = parse_file(CASE, LIMIT)
    # backtick, tilde, a longer closing fence, and an indented fence never closed (runs to the end)
    assert [b.text for b in doc.blocks if b.kind == "code"] == [
        "# drain traffic first\nkubectl drain api-0\n# then restart\nkubectl rollout restart deploy/api",
        '# This comment must not become a heading\nprint("ok")',
        "# longer closing fence is still a close\necho done",
        "# indented fence, never closed\nmake clean",
    ]
    assert headings(doc) == [(1, "Service Runbook"), (2, "Restarting"), (2, "Ports"),
                             (2, "Escalation contacts are listed on the wiki"), (2, "Unclosed")]
    after_close = next(b for b in doc.blocks if b.text == "Ports")  # the fence closed: markup again
    assert after_close.kind == "heading"


def test_front_matter_is_metadata_not_text():
    doc = parse_file(CASE, LIMIT)
    assert doc.title == "Service Runbook"
    assert doc.metadata == {"title": "Service Runbook", "owner": "platform-team", "tags": ["ops", "runbook"]}
    text = all_text(doc)
    assert "platform-team" not in text and "tags:" not in text and "---" not in text


def test_one_and_two_line_setext_headings_keep_the_heading_path():
    doc = parse_file(CASE, LIMIT)
    restart = next(b for b in doc.blocks if b.text.startswith("Restart the API"))
    assert restart.heading_path == ("Service Runbook", "Restarting")
    page = next(b for b in doc.blocks if b.text.startswith("Page the secondary"))
    assert page.heading_path == ("Service Runbook", "Escalation contacts are listed on the wiki")


def test_table_without_leading_pipes_is_rows_with_the_header():
    doc = parse_file(CASE, LIMIT)
    tables = [b for b in doc.blocks if b.kind == "table"]
    assert [t.text for t in tables] == ["Service | Port | Owner\napi | 8080 | platform\nweb | 8443 | frontend"]
    assert tables[0].heading_path == ("Service Runbook", "Ports")


def test_html_comments_are_not_indexed(tmp_path):
    assert "rotate the staging token" not in all_text(parse_file(CASE, LIMIT))
    path = tmp_path / "inline.md"
    path.write_text("# Notes\n\nShip on Tuesdays<!-- not Fridays --> only.\n\n<!--\nmulti-line\nsecret\n-->\n")
    doc = parse_file(path, LIMIT)
    assert [b.text for b in doc.blocks if b.kind != "heading"] == ["Ship on Tuesdays only."]


def test_long_table_repeats_its_header_in_every_chunk(tmp_path):
    rows = "\n".join(f"runner-{i:03d} | Ubuntu 24.04 | {i % 16 + 1} | rack {i % 7}" for i in range(120))
    path = tmp_path / "runners.md"
    path.write_text(f"# Runners\n\nhost | os | cores | location\n---|---|---|---\n{rows}\n")
    doc = parse_file(path, LIMIT)
    tables = [b.text for b in doc.blocks if b.kind == "table"]
    assert len(tables) > 1 and all(t.startswith("host | os | cores | location\n") for t in tables)
    assert all(len(t) <= TABLE_GROUP_CHARS for t in tables)
    lines = [line for t in tables for line in t.splitlines()[1:]]
    assert lines == rows.splitlines()  # every row once, in order, cells as `a | b | c`
    chunks = chunk_document(doc, lambda text: len(text.split()), max_tokens=192, overlap=32)
    row_chunks = [c.text for c in chunks if "runner-" in c.text]
    assert len(row_chunks) > 1 and all("host | os | cores | location" in c for c in row_chunks)


def test_lists_links_and_inline_code(tmp_path):
    path = tmp_path / "steps.md"
    path.write_text("# Steps\n\n3. Run `make dev-up` from [the repo](https://x.example).\n4. Check **health**\n"
                    "   - nested point\n\n![diagram of the stack](stack.png)\n")
    doc = parse_file(path, LIMIT)
    lists = [b.text for b in doc.blocks if b.kind == "list"]
    assert lists == ["3. Run `make dev-up` from the repo.\n4. Check health\n  - nested point"]
    assert "diagram of the stack" in [b.text for b in doc.blocks]


def test_html_table_inside_markdown_keeps_rows(tmp_path):
    path = tmp_path / "mixed.md"
    path.write_text("# Hosts\n\n<table><tr><th>host</th><th>cores</th></tr><tr><td>ci-mac-1</td><td>8</td></tr>"
                    "</table>\n\nAfter the table.\n")
    doc = parse_file(path, LIMIT)
    table = next(b for b in doc.blocks if b.kind == "table")
    assert table.text == "host | cores\nci-mac-1 | 8" and table.heading_path == ("Hosts",)


def test_invalid_front_matter_is_reported_not_indexed(tmp_path):
    path = tmp_path / "broken.md"
    path.write_text("---\ntitle: [unclosed\n---\n# Real\n\nBody.\n")
    doc = parse_file(path, LIMIT)
    assert doc.title == "Real" and doc.metadata == {}
    assert any("front matter" in w for w in doc.warnings)
    assert "unclosed" not in all_text(doc)
