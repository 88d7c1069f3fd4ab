"""Compare two `flywheel eval` result files question by question, with the gate's significance tests.

    flywheel eval --qa ../shared/eval/sqlite/qa.jsonl --qa bench/eval/sqlite_unanswerable.jsonl \
        --docs ../shared/eval/sqlite/docs --out base.jsonl               # FLYWHEEL_ADAPTER unset: base
    FLYWHEEL_ADAPTER=~/.flywheel/adapters/v0001 flywheel eval … --out adapter.jsonl
    python bench/compare_evals.py base.jsonl adapter.jsonl

Prints one JSON object: for each file accuracy, false/correct refusal rates and produced_by shares; for
the pair the mean per-question accuracy gain on the answerable questions, its paired-bootstrap 95%
interval and the exact sign test's p (training/gate.py: the same functions the promotion gate uses).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any

from report import add_report_argument, record
from training.gate import paired_bootstrap, sign_test


def load(path: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row.get("scores")}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over the answerable questions, refusals both ways, and who produced the answers."""
    answerable = [r for r in rows if "accuracy" in r["scores"]]
    unanswerable = [r for r in rows if "correct_refusal" in r["scores"]]
    out: dict[str, Any] = {
        "n": len(rows),
        "accuracy": round(mean(r["scores"]["accuracy"] for r in answerable), 4) if answerable else None,
        "false_refusal": round(mean(r["scores"]["false_refusal"] for r in answerable), 4) if answerable else None,
        "correct_refusal": round(mean(r["scores"]["correct_refusal"] for r in unanswerable), 4) if unanswerable else None,
    }
    for kind in ("model", "quote", "refusal"):
        out[f"produced_by_{kind}"] = round(mean(r.get("produced_by") == kind for r in rows), 4) if rows else None
    out["latency_p50_ms"] = sorted(r["latency_ms"] for r in rows)[len(rows) // 2] if rows else None
    return out


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ids = [i for i in before if i in after and "accuracy" in before[i]["scores"] and "accuracy" in after[i]["scores"]]
    diffs = [float(after[i]["scores"]["accuracy"]) - float(before[i]["scores"]["accuracy"]) for i in ids]
    low, high = paired_bootstrap(diffs) if diffs else (0.0, 0.0)
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"paired": len(ids), "gain": round(mean(diffs), 4) if diffs else 0.0, "ci95": [round(low, 4), round(high, 4)],
            "better": better, "worse": worse, "sign_test_p": round(sign_test(better, worse), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    add_report_argument(parser)
    args = parser.parse_args()
    before, after = load(args.before), load(args.after)
    result = {"before": {"file": str(args.before), **summary(list(before.values()))},
              "after": {"file": str(args.after), **summary(list(after.values()))},
              "paired": compare(before, after)}
    print(json.dumps(result))
    record("compare_evals", result, args.report)


if __name__ == "__main__":
    main()
