"""Answer latency on the default model (SmolLM2-135M-Instruct, CPU): time to first token and total,
over the sample handbook's questions.

    python bench/answer.py --questions 8

The first call converts the bundled GGUF once into FLYWHEEL_HOME (~20 s) and is not counted. Runs with
OMP_WAIT_POLICY=PASSIVE unless set, as `flywheel` and the bot do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from report import add_report_argument, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--home", type=Path, default=None, help="Reuse a FLYWHEEL_HOME (default: a temp dir).")
    add_report_argument(parser)
    args = parser.parse_args()

    from storage.hub import passive_openmp

    passive_openmp()  # as `flywheel` and the bot run (storage/hub.py), before torch loads
    from agent.graph import Agent
    from storage.config import Settings
    from storage.samples import sample_handbook, sample_questions

    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Settings(home=args.home or Path(tmp)))
        agent.kb.ingest([sample_handbook()])
        started = time.perf_counter()
        agent.answer("warm-up: what is the deploy freeze?")
        load_s = time.perf_counter() - started
        rows = []
        for item in sample_questions()[: args.questions]:
            tokens = []
            result = agent.answer(item["question"], on_token=tokens.append)
            t = result.timings_ms
            generate_s = t.get("generate_ms", 0) / 1000
            rows.append({"first_token_ms": t.get("first_token_ms"), "total_ms": t["total_ms"],
                         "retrieve_ms": t.get("retrieve_ms"), "tokens": len(tokens),
                         "tokens_per_s": round(len(tokens) / generate_s, 1) if generate_s else None})
        ttft = sorted(r["first_token_ms"] for r in rows if r["first_token_ms"])
        total = sorted(r["total_ms"] for r in rows)
        result = {
            "questions": len(rows),
            "model": agent.generator.name,
            "first_load_s": round(load_s, 1),
            "first_token_p50_ms": round(statistics.median(ttft), 1) if ttft else None,
            "first_token_max_ms": ttft[-1] if ttft else None,
            "total_p50_ms": round(statistics.median(total), 1),
            "total_max_ms": total[-1],
            "tokens_per_s_mean": round(statistics.fmean(r["tokens_per_s"] for r in rows if r["tokens_per_s"]), 1),
        }
        print(json.dumps(result))
        record("answer", result, args.report)


if __name__ == "__main__":
    main()
