"""Data types shared by parsing, chunking and indexing (the contract between those stages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ParseError(Exception):
    """A file that cannot be ingested; the message is the clear, user-facing reason."""


@dataclass
class Block:
    """One structural unit of a document, in reading order."""

    text: str
    kind: str = "paragraph"  # heading | paragraph | list | code | table
    page: int | None = None  # 1-based physical page index (PDF only)
    heading_path: tuple[str, ...] = ()  # headings above this block, outermost first
    level: int = 0  # heading level for kind == "heading"


@dataclass
class ParsedDocument:
    path: Path
    kind: str  # pdf | markdown | html | text
    blocks: list[Block]
    pages: int | None = None
    title: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. "pages 3, 7 have no text layer (scanned?)"
    encoding: str | None = None  # codec that decodes the file's bytes ("utf-8", "utf-16", "cp1252"); text files only
    metadata: dict = field(default_factory=dict)  # e.g. a Markdown file's YAML front matter


@dataclass
class Chunk:
    text: str  # the body text, without the heading path
    ord: int
    tokens: int
    page: int | None = None  # page where the chunk starts
    heading: str | None = None  # heading path joined with " > "
