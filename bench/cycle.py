"""One default flywheel cycle on a long PDF manual, end to end, timed: does it fit its budget?

    python bench/cycle.py [--pages 200] [--models ~/.flywheel/models] [--teacher offline]

What a new team does on day one, through the real CLI, each command a fresh process in a fresh
FLYWHEEL_HOME (the converted default model copied in from `--models`, as after `flywheel demo`):

    python bench/make_big_pdf.py manual.pdf --pages N      # the generated "Fleet Operations Manual"
    flywheel ingest manual.pdf
    flywheel cycle --teacher offline --json               # distill → datasets → train → gate → retriever

with every setting at its default — `FLYWHEEL_CYCLE_BUDGET_MIN` (30) included, unless the environment
says otherwise. Reports the wall seconds of ingest and of the cycle, their sum against the budget, the
cycle's own plan (pairs distilled, chosen, kept for the next cycle, estimated vs measured training) and
both gates' decisions, and appends a report card (bench/report.py). Exit status 1 when the cycle ran
past its budget, so a CI job can hold the line.

The machine should be quiet: the cycle's plan measures seconds per step on the machine as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import add_report_argument, record  # noqa: E402  (bench/ is sys.path[0] when run as a script)


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """(wall seconds, stdout) of `command`; its stderr (progress bars, logs) goes to `log`. Raises
    SystemExit with the log's tail when it fails."""
    print("$ " + " ".join(command[2:] if command[1] == "-m" else command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log.open("a") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(ROOT))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    return seconds, done.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The last JSON object a `--json` command printed (one per line, or one pretty-printed)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    raise SystemExit(f"no JSON in the cycle's output:\n{stdout[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="make_big_pdf.py's seed")
    parser.add_argument("--models", type=Path, default=Path.home() / ".flywheel" / "models",
                        help="a FLYWHEEL_HOME/models folder to copy in (skips the one-off model conversion)")
    parser.add_argument("--teacher", default="offline")
    parser.add_argument("--keep", type=Path, help="use (and keep) this FLYWHEEL_HOME instead of a temp one")
    add_report_argument(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fw-bench-cycle-"))
    home = args.keep or work / "home"
    home.mkdir(parents=True, exist_ok=True)
    if args.models.is_dir() and not (home / "models").exists():
        shutil.copytree(args.models, home / "models")
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    log = work / "cycle.log"
    pdf = work / "manual.pdf"
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_big_pdf.py"), str(pdf), "--pages", str(args.pages),
                    "--seed", str(args.seed)], check=True, stdout=subprocess.DEVNULL, cwd=str(ROOT))
    load_start = round(os.getloadavg()[0], 2)
    flywheel = [sys.executable, "-m", "bot.cli"]
    ingest_s, _ = timed([*flywheel, "ingest", str(pdf)], env, log)
    cycle_s, out = timed([*flywheel, "cycle", "--teacher", args.teacher, "--json"], env, log)
    cycle = last_json(out)
    counts = cycle.get("counts") or {}
    budget = counts.get("budget") or {}
    budget_min = float(env.get("FLYWHEEL_CYCLE_BUDGET_MIN", 30))
    total_s = ingest_s + cycle_s
    metrics = {
        "pages": args.pages, "teacher": args.teacher, "budget_min": budget_min,
        "ingest_s": round(ingest_s, 1), "cycle_s": round(cycle_s, 1), "total_min": round(total_s / 60, 2),
        "within_budget": total_s <= budget_min * 60 if budget_min > 0 else None,
        "load_1m_start": load_start, "load_1m_end": round(os.getloadavg()[0], 2),
        "status": cycle.get("status"), "stage_s": cycle.get("durations"), "plan": budget,
        "counts": {k: v for k, v in counts.items() if k != "budget"},
        "adapter": cycle.get("adapter_version"), "promoted": cycle.get("promoted"), "reasons": cycle.get("reasons"),
        "retriever": cycle.get("retriever_version"), "retriever_promoted": cycle.get("retriever_promoted"),
        "retriever_reasons": cycle.get("retriever_reasons"), "home": str(home), "log": str(log),
    }
    print(json.dumps(metrics, indent=2))
    print(f"ingest {ingest_s / 60:.1f} min + cycle {cycle_s / 60:.1f} min = {total_s / 60:.1f} min "
          f"(budget {budget_min:g} min): {'within' if metrics['within_budget'] else 'OVER'}", file=sys.stderr)
    record("cycle", metrics, args.report)
    if args.keep is None:
        shutil.rmtree(work / "home", ignore_errors=True)  # the log stays for a look at what ran
    if metrics["within_budget"] is False:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
