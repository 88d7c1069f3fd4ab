"""Answer latency during a cycle vs idle (issue #10: "answer latency during a cycle ≤ 1.5× idle").

    python bench/cycle_latency.py --questions 8

On the bundled sample handbook, ingested into a temp FLYWHEEL_HOME: answer N sample questions through
the real Agent while nothing else runs (idle), then start a real adapter training run in the background
the way a cycle does (offline-teacher distill → datasets → `training.train.train_adapter`, i.e. the same
`run_process` child at `settings.train_nice` with `settings.train_threads`), wait until it is stepping,
answer the same N questions again while it trains, and stop it. Reports p50/p95 of total answer time
idle and during training, their ratio (p50 and p95), and the training child's niceness and torch threads.

The machine should otherwise be quiet: a busy neighbour inflates both phases differently, and starves the
niced training child so the "during" phase measures nothing (`train_cpu_cores_while_answering` near 0;
the card then carries a `warning`). Settings come from the environment as usual, so
`FLYWHEEL_TRAIN_THREADS=1 python bench/cycle_latency.py` or `FLYWHEEL_TRAIN_NICE=0 …` compares variants.
`--models DIR` (default /tmp/fw-s8b/models when present) is copied into the temp home to skip the
one-off model conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from report import add_report_argument, record

DEFAULT_MODELS = Path("/tmp/fw-s8b/models")
STARVED_CORES = 0.25  # less CPU than this for the training child while answering = it was not competing


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def summarise(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 95), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "max_ms": round(max(ms), 1)}


def ask_all(agent: Any, questions: list[str]) -> list[float]:
    """Total answer time (ms, the Agent's own `total_ms`) of each question, answered one after another."""
    times = []
    for question in questions:
        result = agent.answer(question, on_token=lambda _t: None, record=False)
        times.append(float(result.timings_ms["total_ms"]))
    return times


def child_pids(marker: str) -> list[int]:
    """Pids of this process's children whose command line contains `marker` (the training child)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(pid)
    return found


def os_threads(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (all its threads), from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8, help="Questions per phase (the sample ones, repeated).")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                        help="A FLYWHEEL_HOME/models folder to copy in (skips the model conversion).")
    parser.add_argument("--start-timeout", type=float, default=600.0,
                        help="Seconds to wait for the training run's first optimizer step.")
    add_report_argument(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fw-cycle-latency-") as tmp:
        home = Path(tmp)
        if args.models and args.models.is_dir():
            shutil.copytree(args.models, home / "models")
        os.environ["FLYWHEEL_HOME"] = str(home)
        result = run(home, args)
    print(json.dumps(result))
    record("cycle_latency", result, args.report)


def run(home: Path, args: argparse.Namespace) -> dict[str, Any]:
    from agent.graph import Agent
    from storage.config import Settings
    from storage.samples import sample_handbook, sample_questions
    from training.dataset import build_datasets
    from training.distill import distill
    from training.teachers import load_teacher
    from training.train import TrainingError, train_adapter

    settings = Settings(home=home)
    settings.ensure_dirs()
    agent = Agent(settings)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    say("ingesting the sample handbook…")
    agent.kb.ingest([sample_handbook()])
    pool = [q["question"] for q in sample_questions()]
    questions = [pool[i % len(pool)] for i in range(args.questions)]
    agent.answer("warm-up: what is the deploy freeze?", on_token=lambda _t: None, record=False)

    say(f"idle: {len(questions)} questions…")
    load_before_idle = load_1m()
    idle = ask_all(agent, questions)

    # The cycle's data stages (offline teacher: no API), then its training stage in the background.
    store = agent.kb.store
    teacher = load_teacher(settings, "offline")
    distilled = distill(settings, store, teacher)
    data = build_datasets(settings, store, agent.kb, teacher=teacher)
    say(f"distilled {distilled.kept} pairs ({distilled.train} train); dataset {data.files}; training in the background…")

    stepping = threading.Event()
    config: dict[str, Any] = {}
    steps: list[int] = []
    outcome: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "config":
            config.update(event)
        elif event.get("event") == "step":
            steps.append(int(event["step"]))
            stepping.set()

    def train() -> None:
        try:
            # A step cap far beyond what the measurement needs: the run is stopped once the answers are in.
            outcome["record"] = train_adapter(settings, store, data.out_dir, max_steps=100_000, on_event=on_event,
                                              actor="bench")
        except TrainingError as exc:
            outcome["error"] = str(exc).splitlines()[0]
        except Exception as exc:  # noqa: BLE001 - reported, never hangs the bench
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stepping.set()

    trainer = threading.Thread(target=train, name="bench-train", daemon=True)
    started = time.perf_counter()
    trainer.start()
    if not stepping.wait(args.start_timeout) or not steps:
        for pid in child_pids("training."):
            os.kill(pid, signal.SIGTERM)
        trainer.join(60)
        raise SystemExit(f"training never reached a step: {outcome.get('error') or 'timed out'}")
    startup_s = time.perf_counter() - started
    pids = child_pids("training.")
    pid = pids[0] if pids else None
    nice = os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0) if pid else None
    threads_os = os_threads(pid) if pid else None
    first_step = steps[-1]

    say(f"training is stepping (pid {pid}, nice +{nice}, torch threads {config.get('threads')}); "
        f"during: {len(questions)} questions…")
    load_before_during, cpu_before, wall_before = load_1m(), cpu_seconds(pid), time.perf_counter()
    during = ask_all(agent, questions)
    cpu_after, wall_during = cpu_seconds(pid), time.perf_counter() - wall_before
    train_cpu = round(cpu_after - cpu_before, 1) if cpu_before is not None and cpu_after is not None else None
    still_training = trainer.is_alive() and bool(child_pids("training."))
    trained_steps = steps[-1] - first_step

    for child in child_pids("training."):
        os.kill(child, signal.SIGTERM)
    trainer.join(120)

    idle_s, during_s = summarise(idle), summarise(during)
    cores = round(train_cpu / wall_during, 2) if train_cpu is not None else None
    warning = None
    if cores is not None and cores < STARVED_CORES:
        warning = (f"training got {cores} cores while the answers ran: the machine is busy, so the 'during' "
                   "numbers do not measure contention with training")
    return {
        "questions": len(questions),
        "model": agent.generator.name,
        "idle": idle_s,
        "during_training": during_s,
        "ratio_p50": round(during_s["p50_ms"] / idle_s["p50_ms"], 2),
        "ratio_p95": round(during_s["p95_ms"] / idle_s["p95_ms"], 2),
        "within_1_5x": during_s["p95_ms"] <= 1.5 * idle_s["p95_ms"],
        "idle_ms": [round(x) for x in idle],
        "during_ms": [round(x) for x in during],
        "serving_threads": settings.threads or os.cpu_count(),
        "train_nice_setting": settings.train_nice,
        "train_threads_setting": settings.train_threads,
        "train_nice": nice,
        "train_torch_threads": config.get("threads"),
        "train_os_threads": threads_os,
        "train_startup_s": round(startup_s, 1),
        "train_steps_while_answering": trained_steps,
        # CPU the training child got while the answers ran, in cores (2.0 = both cores of a 2-core machine):
        # near 0 means it was starved (a busy machine) and the "during" numbers measured nothing.
        "train_cpu_cores_while_answering": cores,
        "load_1m_before_idle": load_before_idle,
        "load_1m_before_during": load_before_during,
        "training_ran_throughout": still_training,
        "train_rows": data.files.get("sft_train.jsonl"),
        **({"warning": warning} if warning else {}),
    }


if __name__ == "__main__":
    main()
