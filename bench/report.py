"""Report cards: every benchmark appends one JSON line saying what it measured and on what.

    from report import add_report_argument, record          # bench/ is sys.path[0] for `python bench/x.py`
    add_report_argument(parser)                             # --report PATH (default bench/results.jsonl)
    record("answer", metrics, args.report)                  # after printing its own result

Convention: each bench script prints its result as before and appends one line per result to
`bench/results.jsonl` (git-ignored raw output, one object per line; `--report PATH` writes elsewhere,
`--report ''` writes nothing). A line is:

    {"bench": "retrieval", "time": "2025-…Z", "command": "python bench/retrieval.py --chunks 10000",
     "commit": "<40 hex>", "dirty": false, "dirty_files": [],
     "versions": {"torch": "2.13.0", "transformers": …, "peft": …, "trl": …, "sentence-transformers": …,
                  "chromadb": …},
     "torch_threads": 2, "cpu": {"count": 2, "usable": 2, "model": "AMD EPYC …", "load_1m": 0.12},
     "python": "3.12.3", "platform": "Linux-…", "metrics": {…the bench's own numbers…}}

`dirty` is true when `git status --porcelain` lists anything, untracked files included (a new,
uncommitted module changes what ran as much as an edit does); `dirty_files` names up to 20 of them.
`load_1m` is the one-minute load average when the bench finished: a number taken on a busy machine
says so. The machine facts come from /proc/cpuinfo and the standard library, versions from the
installed distributions' metadata (nothing is imported for them except torch, for its thread count).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = ROOT / "bench" / "results.jsonl"
LIBRARIES = ("torch", "transformers", "peft", "trl", "sentence-transformers", "chromadb")
MAX_DIRTY_FILES = 20


def _git(repo: Path, *args: str) -> str | None:
    """stdout of `git -C repo args…` (not stripped: porcelain lines start with a space); None when git is
    missing or the folder is no repository."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(repo: Path = ROOT) -> dict[str, Any]:
    """{"commit": HEAD's full hash or None, "dirty": bool or None, "dirty_files": [path, …]} of `repo`."""
    commit = (_git(repo, "rev-parse", "HEAD") or "").strip() or None
    status = _git(repo, "status", "--porcelain")
    files = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "dirty": None if status is None else bool(files), "dirty_files": files[:MAX_DIRTY_FILES]}


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first "model name" of /proc/cpuinfo (x86; "Model"/"CPU part" elsewhere), else platform's guess."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """CPU count (all, and usable by this process), model and the one-minute load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"count": os.cpu_count(), "usable": usable, "model": cpu_model(),
            "load_1m": round(load, 2) if load is not None else None}


def torch_threads() -> int | None:
    """torch's intra-op thread count in this process (what the bench's own torch work used), or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def report_card(bench: str, metrics: dict[str, Any], *, repo: Path = ROOT, argv: list[str] | None = None) -> dict[str, Any]:
    """The JSON-able card of one result: what ran (bench name, command, commit, dirty flag), on what
    (library versions, torch threads, CPU, Python) and what it measured (`metrics`, unchanged)."""
    args = sys.argv if argv is None else argv
    command = " ".join(shlex.quote(a) for a in ["python", _relative(args[0]), *args[1:]]) if args else None
    return {
        "bench": bench,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        **git_state(repo),
        "versions": library_versions(),
        "torch_threads": torch_threads(),
        "cpu": machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "metrics": metrics,
    }


def _relative(script: str) -> str:
    """`bench/answer.py` rather than an absolute path, so the command reruns from any clone's root."""
    try:
        return str(Path(script).resolve().relative_to(ROOT))
    except ValueError:
        return script


def write_card(card: dict[str, Any], path: Path | str | None = DEFAULT_REPORT) -> Path | None:
    """Append `card` as one line to `path` (created with its folder); None or '' writes nothing."""
    if not path:
        return None
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(card, ensure_ascii=False, default=str) + "\n")
    return target


def record(bench: str, metrics: dict[str, Any], path: Path | str | None = DEFAULT_REPORT) -> dict[str, Any]:
    """Build the card of `metrics` and append it to `path`; returns the card."""
    card = report_card(bench, metrics)
    write_card(card, path)
    return card


def add_report_argument(parser: argparse.ArgumentParser) -> None:
    """--report PATH: where the report cards go (default bench/results.jsonl; '' = nowhere)."""
    parser.add_argument("--report", default=str(DEFAULT_REPORT),
                        help="Append a report card (JSON line: commit, versions, machine, metrics) here; '' = none.")
