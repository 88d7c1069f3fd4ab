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
    # Six held-out questions can't show a real gain (gate_min_items = 40): the gate must say no, whatever
    # the two training steps did, and record why, with the comparison it made against the base model.
    assert not result.promoted and adapter["status"] == "rejected"
    assert result.reasons[0] == "only 6 held-out items; need 40 (add a --qa file, or force the decision)"
    metrics = json.loads(adapter["metrics"])
    decision = metrics["decision"]
    assert decision["promote"] is False and decision["reference"] == "base" and not decision["forced"]
    assert decision["n_items"] == metrics["n"] == metrics["answerable"] + metrics["unanswerable"] == 6
    assert decision["paired"] == metrics["answerable"] > 0  # distill's NOT_FOUND pairs are the unanswerable ones
    assert decision["delta"] == pytest.approx(metrics["primary"] - metrics["compared"]["base"]["primary"], abs=1e-3)
    assert decision["ci_low"] <= decision["delta"] <= decision["ci_high"] and 0 < decision["p_value"] <= 1
    assert [i["origin"] for i in metrics["items"]] == ["heldout"] * 6
    assert result.metrics["candidate"]["n"] == 6 and result.metrics["base"]["n"] == 6
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
        assert json.loads(compared.stdout)["decision"]["promote"] is False  # three items: too few to promote
        assert store.query("SELECT status FROM adapters WHERE version = 'v0001'")[0]["status"] == "rejected"
        promoted = runner.invoke(app, ["promote", "v0001", "--force"], env=env)  # an admin overrides the gate
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
    store.insert("training_runs", {"id": "old", "status": "running", "stage": "train", "started_at": "2026-01-01"})
    monkeypatch.setenv("FLYWHEEL_TRAIN_CRASH_AFTER_STEP", "1")  # the recipe dies like a killed process
    result = run_cycle(cycle_settings, store, max_steps=3)
    assert result.status == "failed" and result.stage == "train"
    assert "Serving is unchanged" in result.summary()
    assert store.promoted_adapter() is None and not store.query("SELECT * FROM adapters")
    runs = {r["id"]: r for r in store.query("SELECT * FROM training_runs")}
    assert runs["old"]["status"] == "failed" and "interrupted" in runs["old"]["error"]  # cleaned up
    assert runs[result.run_id]["status"] == "failed" and runs[result.run_id]["error"]


def test_a_second_cycle_is_refused_while_the_first_holds_the_lock(cycle_settings):
    """Cycle A is held inside its run (its first progress message blocks) while cycle B is started: B must
    come back "busy" at once, without a run row; after A finishes, a cycle runs again."""
    inside, release = threading.Event(), threading.Event()
    first: list = []

    def hold(message: str) -> None:
        inside.set()  # A is past lock.acquire(): it holds the lock now
        assert release.wait(timeout=120), "the test never released the first cycle"

    holder = threading.Thread(target=lambda: first.append(run_cycle(cycle_settings, max_pairs=0, on_progress=hold)))
    holder.start()
    try:
        assert inside.wait(timeout=120), "the first cycle never started"
        second = run_cycle(cycle_settings, max_pairs=0)
        assert second.status == "busy" and second.run_id is None
        assert second.summary() == "A flywheel cycle is already running; not starting another."
        store = Store(cycle_settings.db_path)
        assert [r["status"] for r in store.query("SELECT status FROM training_runs")] == ["running"]  # only A's
    finally:
        release.set()
        holder.join(timeout=120)
    assert not holder.is_alive() and first[0].status == "skipped"  # nothing new to train on
    again = run_cycle(cycle_settings, max_pairs=0)  # the lock was released with A
    assert again.status == "skipped" and again.run_id is not None
    assert sorted(r["status"] for r in store.query("SELECT status FROM training_runs")) == ["skipped", "skipped"]


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
