"""bench/report.py: the report card every benchmark appends (commit, dirty flag, versions, machine, metrics)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def report():
    """bench/report.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / "a.txt").write_text("one\n")
    git(folder, "add", "a.txt")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
    return folder


def test_card_has_commit_dirty_flag_versions_and_machine(report, repo, tmp_path):
    metrics = {"p50_ms": 12.5, "chunks": 100}
    card = report.report_card("retrieval", metrics, repo=repo, argv=[str(BENCH / "retrieval.py"), "--chunks", "100"])
    assert card["commit"] == git(repo, "rev-parse", "HEAD") and len(card["commit"]) == 40
    assert card["dirty"] is False and card["dirty_files"] == []
    assert card["bench"] == "retrieval" and card["metrics"] == metrics
    assert card["command"] == "python bench/retrieval.py --chunks 100"  # rerunnable from the clone's root
    assert set(card["versions"]) == {"torch", "transformers", "peft", "trl", "sentence-transformers", "chromadb"}
    assert card["versions"]["torch"] and card["versions"]["transformers"]  # installed in the dev venv
    assert isinstance(card["torch_threads"], int) and card["torch_threads"] >= 1
    assert card["cpu"]["count"] >= 1 and card["cpu"]["usable"] >= 1 and "model" in card["cpu"]
    assert card["python"] == ".".join(map(str, sys.version_info[:3]))

    (repo / "a.txt").write_text("two\n")  # an edit, and an untracked file, both make the tree dirty
    (repo / "new.py").write_text("")
    dirty = report.report_card("retrieval", metrics, repo=repo, argv=["x"])
    assert dirty["dirty"] is True and sorted(dirty["dirty_files"]) == ["a.txt", "new.py"]

    out = tmp_path / "cards" / "results.jsonl"
    report.write_card(card, out)
    report.write_card(dirty, out)  # appended, one JSON object per line
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["dirty"] for line in lines] == [False, True] and lines[0]["commit"] == card["commit"]
    assert report.write_card(card, "") is None  # --report '' writes nothing


def test_outside_a_repository_the_commit_is_unknown(report, tmp_path):
    state = report.git_state(tmp_path)
    assert state == {"commit": None, "dirty": None, "dirty_files": []}


def test_cpu_model_is_read_from_cpuinfo(report, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.0GHz\n\n")
    assert report.cpu_model(cpuinfo) == "Example CPU @ 2.0GHz"


def test_every_bench_script_writes_a_card(report):
    """Each benchmark that measures something accepts --report and calls record(); the two PDF makers
    generate inputs and measure nothing."""
    makers = {"make_big_pdf.py", "make_sample_pdf.py", "report.py"}
    scripts = [p for p in sorted(BENCH.glob("*.py")) if p.name not in makers]
    assert len(scripts) >= 7
    for script in scripts:
        text = script.read_text()
        assert "add_report_argument(parser)" in text and "record(" in text, script.name
