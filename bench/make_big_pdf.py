"""Generate a large, realistic text PDF for the ingestion benchmark.

    python bench/make_big_pdf.py /tmp/big.pdf --pages 200
    python bench/make_big_pdf.py /tmp/big.pdf --pages 1000 --seed 7

The document is a fictional "Fleet Operations Manual": numbered chapters and sections
with larger headings, several paragraphs of procedurally composed technical prose per
page, an occasional bullet list, a running header and a "Page N of M" footer, plus an
outline (bookmarks) with one entry per chapter. The prose is assembled from grammar
templates and a few hundred words of domain vocabulary, so chunking, embedding and BM25
see varied text (not one paragraph repeated) while the output stays deterministic for a
given --seed.

It uses the built-in Helvetica font and `insert_textbox`, not HTML layout, so that even
thousands of pages build in seconds and the benchmark measures ingestion, not this script.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import pymupdf

PAGE_W, PAGE_H = 612, 792  # US Letter, points
MARGIN = 72
BODY_TOP, BODY_BOTTOM = 70, PAGE_H - 60
BODY_FONTSIZE = 10.5
TITLE = "Fleet Operations Manual"
HEADER = f"Northwind Robotics - {TITLE}"  # base-14 fonts have no em dash

# --- vocabulary ------------------------------------------------------------------------------
SUBSYSTEMS = [
    "mission router", "telemetry pipeline", "charging scheduler", "fleet registry", "map server",
    "localization service", "safety controller", "firmware updater", "event bus", "API gateway",
    "traffic planner", "obstacle classifier", "battery monitor", "pick verifier", "dock allocator",
    "replay archive", "metrics collector", "alert router", "config service", "identity broker",
]
COMPONENTS = [
    "lidar driver", "wheel encoder", "motor controller", "gripper", "camera array", "IMU",
    "battery pack", "charging contact", "emergency stop circuit", "edge computer", "wifi bridge",
    "conveyor interface", "barcode scanner", "load cell", "bumper sensor", "status beacon",
]
METRICS = [
    "p99 latency", "queue depth", "mission success rate", "battery cycle count", "packet loss",
    "localization drift", "CPU saturation", "heartbeat interval", "error budget burn rate",
    "disk write amplification", "time to first pick", "retry rate", "clock skew", "memory pressure",
]
ACTIONS = [
    "drain", "restart", "recalibrate", "quarantine", "reprovision", "roll back", "throttle",
    "reindex", "rebalance", "snapshot", "fail over", "warm up", "re-home", "reconcile", "audit",
]
ROLES = [
    "the on-call engineer", "the site reliability lead", "the warehouse supervisor", "the field technician",
    "the incident commander", "the release manager", "the customer success engineer", "the safety officer",
]
CONDITIONS = [
    "after a firmware rollout", "during the nightly compaction window", "when a site loses uplink",
    "under peak order volume", "while a map migration is in progress", "after a power interruption",
    "when two robots contend for the same aisle", "during a regional failover", "on cold start",
    "when the charging bay is at capacity", "after a clock adjustment", "during a canary release",
]
OUTCOMES = [
    "missions are delayed but not lost", "the robot parks itself in the nearest safe zone",
    "telemetry is buffered locally for up to six hours", "the scheduler falls back to static routes",
    "operators see a degraded banner in the console", "duplicate picks are rejected by the verifier",
    "the affected aisle is closed to traffic", "alerts are grouped into a single incident",
]
ADVERBS = ["gradually", "immediately", "conservatively", "automatically", "manually", "temporarily", "safely"]
TOPICS = [
    "Fleet Architecture", "Site Commissioning", "Mission Lifecycle", "Charging and Power",
    "Navigation and Mapping", "Safety Systems", "Telemetry and Observability", "Firmware Management",
    "Incident Response", "Capacity Planning", "Network Topology", "Maintenance Procedures",
    "Data Retention", "Access Control", "Performance Tuning", "Disaster Recovery",
]
SECTION_KINDS = [
    "Overview", "Failure Modes", "Operating Limits", "Runbook", "Monitoring", "Configuration",
    "Troubleshooting", "Known Issues", "Design Rationale", "Checklist",
]

TEMPLATES = [
    "When the {sub} reports rising {metric} {cond}, {role} should {act} the {comp} before escalating.",
    "The {sub} depends on the {sub2} for state; if it becomes unavailable, {out}.",
    "Operators can {act} a {comp} from the console, but the {sub} will {adv} reject the request if a mission is active.",
    "We chose to {act} the {sub} {adv} because a sudden change in {metric} has caused cascading failures in the past.",
    "{role_cap} owns the decision to {act} the {sub2}; everyone else proposes the change in the incident channel.",
    "Each {comp} publishes its {metric} every {n} seconds, and the {sub} keeps the last {m} samples in memory.",
    "If {metric} exceeds {n}% for more than {m} minutes {cond}, {out}.",
    "Do not {act} the {sub} and the {sub2} at the same time; the two share a lease and will both stall.",
    "Site {site} runs {n} robots per aisle, so {metric} there is usually higher than the fleet median.",
    "In release {rel}, the {sub} began to {act} idle connections {adv}, which reduced {metric} by about {n}%.",
    "A healthy {comp} recovers within {n} seconds; a {comp} that does not is marked for inspection by {role}.",
    "Dashboards group {metric} by site and by {comp} model, which makes regressions after a rollout easy to spot.",
]

BULLETS = [
    "Confirm that the {sub} is reachable from the site gateway.",
    "Check {metric} on the site dashboard for the last {n} minutes.",
    "Ask {role} to {act} the affected {comp}.",
    "Record the mission identifiers of every robot that paused.",
    "Verify that the {sub2} has caught up before resuming traffic.",
    "Attach the replay archive link to the incident ticket.",
]


def _fill(template: str, rng: random.Random) -> str:
    role = rng.choice(ROLES)
    sub, sub2 = rng.sample(SUBSYSTEMS, 2)
    return template.format(
        sub=sub, sub2=sub2, comp=rng.choice(COMPONENTS), metric=rng.choice(METRICS),
        act=rng.choice(ACTIONS), role=role, role_cap=role[0].upper() + role[1:], cond=rng.choice(CONDITIONS),
        out=rng.choice(OUTCOMES), adv=rng.choice(ADVERBS), n=rng.randint(2, 95), m=rng.randint(2, 60),
        site=f"{rng.choice('ABCDEFGHKLMNPRST')}{rng.randint(10, 99)}",
        rel=f"r{rng.randint(2022, 2025)}.{rng.randint(1, 12):02d}.{rng.randint(1, 28):02d}-{rng.randint(1, 4)}",
    )


def paragraph(rng: random.Random) -> str:
    """A paragraph of 3-6 sentences; the first letter is capitalised by the templates."""
    return " ".join(_fill(rng.choice(TEMPLATES), rng) for _ in range(rng.randint(3, 6)))


def bullet_list(rng: random.Random) -> str:
    items = rng.sample(BULLETS, rng.randint(3, 5))
    return "\n".join(f"- {_fill(item, rng)}" for item in items)


def generate(out_path: Path, pages: int, seed: int = 42) -> Path:
    """Write a `pages`-page PDF to `out_path` and return the path."""
    rng = random.Random(seed)
    doc = pymupdf.open()
    toc: list[list] = []
    chapter = section = since_heading = 0
    pending: tuple[str, str] | None = None  # a block that did not fit on the previous page

    def next_block() -> tuple[str, str]:
        """The next (kind, text) in reading order: chapter/section headings, paragraphs, lists."""
        nonlocal chapter, section, since_heading
        roll = rng.random()
        since_heading += 1
        # Headings need body text after them: no empty chapters or back-to-back headings.
        if chapter == 0 or (roll < 0.04 and since_heading > 6):
            chapter += 1
            section = 0
            since_heading = 0
            return "h1", f"Chapter {chapter}. {TOPICS[(chapter - 1) % len(TOPICS)]}"
        if roll < 0.18 and since_heading > 2:
            section += 1
            since_heading = 0
            return "h2", f"{chapter}.{section} {rng.choice(SECTION_KINDS)}"
        if roll < 0.26:
            return "list", bullet_list(rng)
        return "p", paragraph(rng)

    styles = {"h1": (18, "hebo", 10), "h2": (13, "hebo", 6), "p": (BODY_FONTSIZE, "helv", 8), "list": (BODY_FONTSIZE, "helv", 8)}
    for number in range(1, pages + 1):
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        y = BODY_TOP
        while True:
            kind, text = pending or next_block()
            pending = None
            size, font, gap = styles[kind]
            if kind in ("h1", "h2") and BODY_BOTTOM - y < 120 and y > BODY_TOP:
                pending = (kind, text)  # keep a heading with the text below it
                break
            rect = pymupdf.Rect(MARGIN, y, PAGE_W - MARGIN, BODY_BOTTOM)
            # insert_textbox writes nothing and returns a negative number when the text
            # does not fit, so the block simply moves to the next page (no split paragraphs).
            left = page.insert_textbox(rect, text, fontsize=size, fontname=font, lineheight=1.3)
            if left < 0:
                pending = (kind, text)
                if y == BODY_TOP:  # cannot happen with these block sizes, but never loop forever
                    raise RuntimeError("block taller than a page")
                break
            if kind == "h1":
                toc.append([1, text, number])
            elif kind == "h2":
                toc.append([2, text, number])
            y = BODY_BOTTOM - left + gap
            if BODY_BOTTOM - y < 40:
                break
        page.insert_text((MARGIN, 42), HEADER, fontsize=8.5, fontname="helv", color=(0.4, 0.4, 0.4))
        page.draw_line((MARGIN, 50), (PAGE_W - MARGIN, 50), color=(0.7, 0.7, 0.7), width=0.5)
        footer = f"Page {number} of {pages}"
        width = pymupdf.get_text_length(footer, fontname="helv", fontsize=8.5)
        page.insert_text(((PAGE_W - width) / 2, PAGE_H - 32), footer, fontsize=8.5, fontname="helv", color=(0.4, 0.4, 0.4))

    # A level-2 entry needs a level-1 parent; the first block is always a chapter, so it has one.
    doc.set_toc(toc)
    doc.set_metadata({"title": TITLE, "author": "Northwind Robotics", "creator": "bench/make_big_pdf.py",
                      "creationDate": "D:20250101000000Z", "modDate": "D:20250101000000Z"})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(out_path, garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate a large text PDF for the ingestion benchmark.")
    parser.add_argument("out", type=Path, help="output PDF path, e.g. /tmp/big.pdf")
    parser.add_argument("--pages", type=int, default=200, help="number of pages (default: 200)")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same text (default: 42)")
    args = parser.parse_args()
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    start = time.perf_counter()
    path = generate(args.out, args.pages, args.seed)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path}: {args.pages} pages, {size_mb:.1f} MB in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
