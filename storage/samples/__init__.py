"""The bundled sample knowledge base: a fictional team handbook (Markdown + one PDF) and questions on it."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sample_handbook() -> Path:
    return HERE / "handbook"


def sample_questions() -> list[dict]:
    return [json.loads(line) for line in (HERE / "questions.jsonl").read_text().splitlines() if line.strip()]


def unanswerable_questions() -> list[dict]:
    return [json.loads(line) for line in (HERE / "unanswerable.jsonl").read_text().splitlines() if line.strip()]
