"""HTML as intranets and docs sites write it (shared/cases/html-aspnet-form-wrapper, html-deep-nesting):
pages wrapped in one <form>, cautions in <aside>, inline tags nested past Python's recursion limit,
data tables whose rows keep their header, and the charset a page declares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from storage.config import Settings
from storage.knowledge import KnowledgeBase
from storage.parsing import parse_file

CASES = Path(__file__).parent / "data" / "cases" / "html-aspnet-form-wrapper"
LIMIT = 10_000_000


def body(doc) -> list[str]:
    return [b.text for b in doc.blocks if b.kind != "heading"]


def chunk_texts(kb: KnowledgeBase, name: str) -> list[str]:
    return [r["text"] for r in kb.store.query("SELECT text FROM chunks WHERE source = ? ORDER BY ord", (name,))]


def test_page_inside_one_form_is_ingested_in_full():
    doc = parse_file(CASES / "RemoteWork.aspx.html", LIMIT)
    assert [(b.level, b.text) for b in doc.blocks if b.kind == "heading"] == [
        (1, "Remote Work Policy"), (2, "Eligibility"), (2, "Equipment")]
    assert body(doc) == [
        "Employees may work remotely up to three days per week after their probation period ends.",
        "The company provides a laptop and a monitor; home internet costs are reimbursed up to 40 euros per month.",
    ]
    assert doc.blocks[-1].heading_path == ("Remote Work Policy", "Equipment")
    assert "wEPDwUKLTk1ODU2MjQ0NmRk" not in " ".join(body(doc))  # the hidden __VIEWSTATE input is not text


def test_search_and_signup_forms_are_still_dropped(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<html><body><form action='/search'><label>Search the site</label><input name=q></form>"
                    "<h1>Guide</h1><p>" + "Real content sentence. " * 10 + "</p>"
                    "<form><p>Subscribe to our newsletter</p><input name=email></form></body></html>")
    text = " ".join(body(parse_file(path, LIMIT)))
    assert "Real content sentence." in text
    assert "Search the site" not in text and "Subscribe" not in text


def test_asides_inside_the_article_are_kept_and_the_caution_is_in_a_chunk(tmp_path):
    doc = parse_file(CASES / "migrations.html", LIMIT)
    caution = ("Caution: never run migrations by hand against the production primary; "
               "use the migration job so the change is recorded.")
    assert body(doc) == ["Migrations run automatically during the deploy pipeline.", caution,
                         "Note: a failed migration blocks the deploy until it is rolled back."]
    kb = KnowledgeBase(Settings(home=tmp_path / "home"))
    assert not kb.ingest([CASES / "migrations.html"]).failed
    assert any(caution in text for text in chunk_texts(kb, "migrations.html"))
    from agent.retrieval import Retriever

    top = Retriever(kb).search("Can I run migrations by hand on production?", k=1).hits[0]
    assert caution in top.text


def test_sidebar_aside_outside_the_article_is_dropped(tmp_path):
    path = tmp_path / "post.html"
    path.write_text("<html><body><main><article><h1>Post</h1><p>" + "Body words here. " * 10 + "</p>"
                    "<aside class='warning'>Warning: back up first.</aside></article>"
                    "<aside><h3>Related posts</h3><ul><li>Other post</li></ul></aside></main></body></html>")
    text = " ".join(b.text for b in parse_file(path, LIMIT).blocks)
    assert "Warning: back up first." in text
    assert "Related posts" not in text and "Other post" not in text


def test_1500_nested_inline_tags_keep_their_structure(tmp_path):
    """The case's page (regenerated): no recursion-limit fallback, headings still give the path."""
    path = tmp_path / "nested.html"
    inner = "<span>" * 1500 + "Deploys are frozen on Fridays after 15:00." + "</span>" * 1500
    path.write_text(f"<html><head><title>Freeze</title></head><body><h1>Deploy freeze</h1><p>{inner}</p></body></html>")
    doc = parse_file(path, LIMIT)
    assert doc.warnings == []
    assert [(b.kind, b.heading_path, b.text) for b in doc.blocks] == [
        ("heading", (), "Deploy freeze"),
        ("paragraph", ("Deploy freeze",), "Deploys are frozen on Fridays after 15:00."),
    ]


def test_nesting_far_past_the_recursion_limit_and_the_rest_of_the_run(tmp_path):
    depth = sys.getrecursionlimit() * 10
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "nested.html").write_text(
        "<html><body><h1>Deploy freeze</h1>" + "<div><span>" * depth + "Deploys are frozen on Fridays."
        + "</span></div>" * depth + "<h2>Exceptions</h2><p>Hotfixes may ship with approval.</p></body></html>")
    (docs / "other.md").write_text("# Other\n\nThe cafeteria opens at 08:00.\n")
    doc = parse_file(docs / "nested.html", LIMIT)
    frozen = next(b for b in doc.blocks if b.text == "Deploys are frozen on Fridays.")
    assert frozen.heading_path == ("Deploy freeze",)
    hotfix = next(b for b in doc.blocks if b.text == "Hotfixes may ship with approval.")
    assert hotfix.heading_path == ("Deploy freeze", "Exceptions")
    kb = KnowledgeBase(Settings(home=tmp_path / "home"))
    report = kb.ingest([docs])
    assert not report.failed and kb.stats()["documents"] == 2


RUNNERS = [("ci-linux-%d" % i, "Ubuntu 24.04", str(4 + i % 4), "Frankfurt") for i in range(1, 40)]
RUNNERS.insert(25, ("ci-mac-1", "macOS 15", "8", "Berlin"))


def runners_page(header: str) -> str:
    rows = "".join(f"<tr><td>{'</td><td>'.join(r)}</td></tr>" for r in RUNNERS)
    return f"<html><body><h1>Build runners</h1><table>{header}{rows}</table></body></html>"


def test_table_rows_carry_their_header_into_every_chunk(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "runners.html").write_text(
        runners_page("<thead><tr><th>runner</th><th>os</th><th>cores</th><th>location</th></tr></thead>"))
    kb = KnowledgeBase(Settings(home=tmp_path / "home"))
    assert not kb.ingest([docs]).failed
    chunks = chunk_texts(kb, "runners.html")
    assert len(chunks) > 1  # the table is long enough to be cut
    mac = [text for text in chunks if "ci-mac-1 | macOS 15 | 8 | Berlin" in text]
    assert mac and all(text.splitlines()[0] == "runner | os | cores | location" for text in mac)
    assert all("cores" in text for text in chunks if "ci-linux" in text)


def test_header_row_of_th_cells_without_thead_is_the_header(tmp_path):
    path = tmp_path / "runners.html"
    path.write_text(runners_page("<tr><th>runner</th><th>os</th><th>cores</th><th>location</th></tr>"))
    tables = [b.text for b in parse_file(path, LIMIT).blocks if b.kind == "table"]
    assert len(tables) > 1 and all(t.startswith("runner | os | cores | location\n") for t in tables)
    assert sum(t.count("ci-") for t in tables) == len(RUNNERS)  # every row once


def test_table_without_header_cells_repeats_no_row(tmp_path):
    path = tmp_path / "pairs.html"
    rows = "".join(f"<tr><td>key{i}</td><td>{'value text ' * 5}{i}</td></tr>" for i in range(30))
    path.write_text(f"<html><body><h1>Pairs</h1><table>{rows}</table></body></html>")
    tables = [b.text for b in parse_file(path, LIMIT).blocks if b.kind == "table"]
    assert len(tables) > 1
    assert sum(t.count("key0 |") for t in tables) == 1


@pytest.mark.parametrize("declaration", [
    '<meta charset="windows-1251">',
    '<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">',
])
def test_declared_charset_is_honored(tmp_path, declaration):
    text = "Отпуск согласуется с руководителем за две недели."
    path = tmp_path / "otpusk.html"
    path.write_bytes(f"<html><head>{declaration}<title>Отпуск</title></head><body><h1>Отпуск</h1>"
                     f"<p>{text}</p></body></html>".encode("cp1251"))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == "cp1251" and body(doc) == [text] and doc.title == "Отпуск"
    assert doc.warnings == []


def test_xml_declaration_charset_is_honored(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes('<?xml version="1.0" encoding="ISO-8859-15"?>\n<html><body><h1>Preise</h1>'
                     '<p>Der Eintritt kostet 5 € für Schüler.</p></body></html>'.encode("iso8859-15"))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == "iso8859-15" and body(doc) == ["Der Eintritt kostet 5 € für Schüler."]


def test_latin1_label_reads_as_windows_1252_like_browsers(tmp_path):
    path = tmp_path / "quotes.html"
    path.write_bytes('<html><head><meta charset="iso-8859-1"></head><body><p>It’s “done” – café.</p></body></html>'
                     .encode("cp1252"))
    doc = parse_file(path, LIMIT)
    assert doc.encoding == "cp1252" and body(doc) == ["It’s “done” – café."]


def test_wrong_declared_charset_falls_back_with_a_warning(tmp_path):
    path = tmp_path / "liar.html"
    path.write_bytes('<html><head><meta charset="utf-8"></head><body><p>Caf\xe9 cr\xe8me br\xfbl\xe9e, '
                     'na\xefve fa\xe7ade.</p></body></html>'.encode("latin-1"))
    doc = parse_file(path, LIMIT)
    assert body(doc) == ["Café crème brûlée, naïve façade."]
    assert doc.encoding == "cp1252"
    assert any("declares charset 'utf-8'" in w for w in doc.warnings)
