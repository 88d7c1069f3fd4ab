"""The whole flywheel cycle on a tiny model: ingest → distill → datasets → train (subprocess) → gate,
plus single-flight, skipping, a crash mid-cycle and the scheduler."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from storage.db import Store
from training.cycle import cycle_lock, run_cycle


@pytest.fixture
def cycle_settings(handbook_home, settings):
    shutil.copytree(handbook_home, settings.home, dirs_exist_ok=True)
    return settings.model_copy(update={"gate_max_items": 6, "gate_max_new_tokens": 8, "epochs": 1})


def test_whole_cycle_on_a_tiny_model(cycle_settings):
    store = Store(cycle_settings.db_path)
    lines: list[str] = []
    result = run_cycle(cycle_settings, store, max_steps=2, on_progress=lines.append)
    assert result.status == "succeeded", result.error
    assert set(result.durations) >= {"ingest", "distill", "dataset", "train", "evaluate"}
    assert result.counts["distill"]["kept"] >= 30 and result.counts["dataset"]["sft_train.jsonl"] > 0
    assert result.adapter_version == "v0001"
    run = store.query("SELECT * FROM training_runs WHERE id = ?", (result.run_id,))[0]
    assert run["status"] == "succeeded" and run["adapter_version"] == "v0001"
    assert json.loads(run["durations"])["train"] > 0
    adapter = store.query("SELECT * FROM adapters WHERE version = 'v0001'")[0]
    # A random tiny model trained for two steps is no better than its base: the gate must say no.
    assert adapter["status"] == ("promoted" if result.promoted else "rejected")
    assert json.loads(adapter["metrics"])["decision"]["reasons"]
    assert any("train" in line for line in lines)

    # Nothing new since: the next cycle is skipped without training.
    again = run_cycle(cycle_settings, store)
    assert again.status == "skipped" and "new training pairs" in again.reasons[0]

    # The CLI: compare the candidate with the base (nothing applied), then promote it by hand;
    # `status --json` shows the serving adapter.
    from typer.testing import CliRunner

    from bot.cli import app
    from storage.config import get_settings

    env = {"FLYWHEEL_HOME": str(cycle_settings.home), "FLYWHEEL_MODEL": cycle_settings.model,
           "FLYWHEEL_GATE_MAX_ITEMS": "3", "FLYWHEEL_GATE_MAX_NEW_TOKENS": "8"}
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        compared = runner.invoke(app, ["eval", "--adapter", "v0001", "--json"], env=env)
        assert compared.exit_code == 0, compared.output
        reports = json.loads(compared.stdout)["reports"]
        assert set(reports) == {"base", "candidate"} and reports["candidate"]["n"] == 3
        assert store.query("SELECT status FROM adapters WHERE version = 'v0001'")[0]["status"] == adapter["status"]
        if not result.promoted:
            promoted = runner.invoke(app, ["promote", "v0001", "--force"], env=env)
            assert promoted.exit_code == 0, promoted.output
        status = runner.invoke(app, ["status", "--json"], env=env)
        assert json.loads(status.stdout)["adapter"] == "v0001"
    finally:
        get_settings.cache_clear()


def test_single_flight_across_processes(cycle_settings):
    with cycle_lock(cycle_settings):  # what another process holding the lock looks like
        result = run_cycle(cycle_settings)
    assert result.status == "busy" and result.run_id is None


def test_crash_mid_cycle_leaves_serving_untouched(cycle_settings, monkeypatch):
    store = Store(cycle_settings.db_path)
    store.db["training_runs"].insert({"id": "old", "status": "running", "stage": "train", "started_at": "2026-01-01"})
    monkeypatch.setenv("FLYWHEEL_TRAIN_CRASH_AFTER_STEP", "1")  # the recipe dies like a killed process
    result = run_cycle(cycle_settings, store, max_steps=3)
    assert result.status == "failed" and result.stage == "train"
    assert "Serving is unchanged" in result.summary()
    assert store.promoted_adapter() is None and not store.query("SELECT * FROM adapters")
    runs = {r["id"]: r for r in store.query("SELECT * FROM training_runs")}
    assert runs["old"]["status"] == "failed" and "interrupted" in runs["old"]["error"]  # cleaned up
    assert runs[result.run_id]["status"] == "failed" and runs[result.run_id]["error"]


def test_concurrent_cycles_in_threads_run_once(cycle_settings):
    results = []
    barrier = threading.Barrier(2)

    def go():
        barrier.wait()
        results.append(run_cycle(cycle_settings, max_pairs=0))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.status for r in results) in (["busy", "skipped"], ["skipped", "skipped"])


def test_scheduler_registers_the_cycle_and_records_the_next_run(cycle_settings):
    from training.scheduler import JOB_ID, NEXT_RUN_KEY, build_scheduler, scheduled_cycle, start

    sched = build_scheduler(cycle_settings.model_copy(update={"cycle_cron": "30 4 * * mon"}))
    try:
        when = start(sched, cycle_settings)
        job = sched.get_job(JOB_ID)
        assert job.func is scheduled_cycle and job.next_run_time.weekday() == 0
        assert Store(cycle_settings.db_path).get_kv(NEXT_RUN_KEY) == when
    finally:
        sched.shutdown(wait=False)
    assert build_scheduler(cycle_settings.model_copy(update={"cycle_cron": ""})) is None
