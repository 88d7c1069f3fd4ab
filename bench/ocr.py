"""OCR throughput: parse a generated PDF of scanned pages, each OCR'd with Tesseract through PyMuPDF.

    python bench/ocr.py --pages 5

Each page is a 200 dpi grayscale image of a page of prose (what an office scanner writes), with no
text layer, so `storage.pdf.parse_pdf` OCRs every page (at `OCR_DPI`). Prints one JSON line: pages,
words read, seconds and pages/s. Needs Tesseract's English data (apt-get install tesseract-ocr
tesseract-ocr-eng); exits with status 1 without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pymupdf

from report import add_report_argument, record
from storage.pdf import OCR_DPI, parse_pdf, tessdata_dir

PROSE = (
    "Security incidents must be reported to the on-call engineer within 30 minutes. The incident commander "
    "opens a bridge call and a ticket in the tracker, and customer data exposure is escalated to the "
    "privacy officer the same day. Lost badges are reported to the security desk within one hour so they "
    "can be disabled. Staff parking permits are renewed every January through the facilities portal. "
)


def scanned_pdf(pages: int) -> bytes:
    """A PDF of `pages` image-only pages, each a scan of a page of prose with a numbered heading."""
    out = pymupdf.open()
    for number in range(1, pages + 1):
        source = pymupdf.open()
        page = source.new_page()  # A4
        page.insert_text((72, 80), f"Section {number}: operations handbook", fontsize=16)
        page.insert_textbox(pymupdf.Rect(72, 110, 523, 770), PROSE * 6, fontsize=11)
        image = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY).tobytes("png")
        out.new_page().insert_image(page.rect, stream=image)
    return out.tobytes()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--pages", type=int, default=5, help="Scanned pages to generate and OCR.")
    add_report_argument(parser)
    args = parser.parse_args()
    if tessdata_dir() is None:
        sys.exit("Tesseract's English data is not installed: apt-get install tesseract-ocr tesseract-ocr-eng")
    data = scanned_pdf(args.pages)
    started = time.perf_counter()
    doc = parse_pdf(Path("scanned.pdf"), data)
    seconds = time.perf_counter() - started
    words = sum(len(block.text.split()) for block in doc.blocks)
    read = len({block.page for block in doc.blocks})
    result = {"pages": args.pages, "pages_with_text": read, "words": words, "dpi": OCR_DPI,
              "seconds": round(seconds, 2), "pages_per_s": round(args.pages / seconds, 3)}
    print(json.dumps(result), flush=True)
    record("ocr", result, args.report)


if __name__ == "__main__":
    main()
