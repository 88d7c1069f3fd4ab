"""Ingestion throughput: parse + chunk + embed + index a generated N-page PDF (and any extra paths).

    python bench/ingest.py --pages 200
    python bench/ingest.py --pages 0 --path ../shared/eval/sqlite/docs

Prints one JSON line per corpus: pages, chunks, seconds, pages/s and chunks/s (a cold run: fresh
FLYWHEEL_HOME, embedder already loaded so its ~1 s start-up isn't counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_report_argument, record


def run(paths: list[Path], home: Path) -> dict:
    from storage.config import Settings
    from storage.knowledge import KnowledgeBase

    kb = KnowledgeBase(Settings(home=home))
    kb.embedder.encode(["warm up"])
    started = time.perf_counter()
    report = kb.ingest(paths)
    seconds = time.perf_counter() - started
    return {
        "corpus": ", ".join(p.name for p in paths),
        "files": len(report.files),
        "failed": len(report.failed),
        "pages": report.pages,
        "chunks": report.chunks,
        "seconds": round(seconds, 2),
        "pages_per_s": round(report.pages / seconds, 1) if report.pages else None,
        "chunks_per_s": round(report.chunks / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200, help="Generate and ingest a PDF of this many pages.")
    parser.add_argument("--path", type=Path, nargs="*", default=[], help="Also ingest these files/folders.")
    add_report_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.pages:
            pdf = tmp / f"generated-{args.pages}-pages.pdf"
            maker = Path(__file__).with_name("make_big_pdf.py")
            subprocess.run([sys.executable, str(maker), str(pdf), "--pages", str(args.pages)], check=True)
            result = run([pdf], tmp / "home-pdf")
            print(json.dumps(result), flush=True)
            record("ingest", result, args.report)
        if args.path:
            result = run(args.path, tmp / "home-paths")
            print(json.dumps(result), flush=True)
            record("ingest", result, args.report)


if __name__ == "__main__":
    main()
