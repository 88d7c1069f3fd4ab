"""A cycle bounded by time (training/budget.py): the plan, the pairs kept for the next cycle, the estimate
line, progress with an ETA, `flywheel status` while a cycle runs, and low-priority child processes."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from storage.db import Store, now
from training import budget
from training.budget import StepTime, candidate_order, fit_plan, mark_trained, step_seconds_from_losses, trim_train_file

PLAN_LINE = re.compile(r"^training (\d+) of (\d+) new pairs, est\. [\d.]+ (?:min|s) \(([\d.]+) s/step × (\d+) steps\)"
                       r"; (\d+) kept for the next cycle")


def add_pairs(store: Store, n: int, *, trained: bool = False, prefix: str = "p", docs: int = 2) -> list[str]:
    ids = []
    for i in range(n):
        pid = f"{prefix}{i:03d}"
        with store.transaction() as conn:
            conn.execute("INSERT INTO qa_pairs (id, chunk_id, document_id, section, question, answer, split, teacher, "
                         "created_at, trained_at) VALUES (?, ?, ?, ?, ?, 'a', 'train', 'offline', ?, ?)",
                         (pid, f"c{i}", f"d{i % docs}", f"s{i % 3}", f"q{i}", f"2026-01-01T00:00:{i:02d}",
                          "2026-01-02" if trained else None))
        ids.append(pid)
    return ids


def test_a_budget_admits_the_pairs_whose_steps_fit(settings):
    settings = settings.model_copy(update={"epochs": 1, "batch_size": 4, "grad_accum": 1, "notfound_fraction": 0.08})
    order = [f"p{i}" for i in range(40)]
    step = StepTime(seconds_per_step=10.0, startup_seconds=0.0, source="v0001")
    plan = fit_plan(settings, order, 40, step, available_seconds=100.0, heldout_rows=0, fixed_rows=0)
    # 37 pairs + 3 not-found rows = 40 rows = 10 steps = 100 s; a 38th pair would make 41 rows, 11 steps.
    assert (plan.chosen_new, plan.kept, plan.steps, plan.train_seconds) == (37, 3, 10, 100.0)
    assert plan.chosen_ids == order[:37]
    unbounded = fit_plan(settings, order, 40, step, available_seconds=None, heldout_rows=0, fixed_rows=0)
    assert unbounded.chosen_new == 40 and unbounded.kept == 0  # what ignoring the budget would train on
    assert plan.line() == ("training 37 of 40 new pairs, est. 1.7 min (10.0 s/step × 10 steps); "
                           "3 kept for the next cycle")
    # Held-out scoring every save_steps and the start-up count against the budget too.
    slower = fit_plan(settings, order, 40, StepTime(10.0, 30.0, "probe"), available_seconds=100.0, heldout_rows=12,
                      fixed_rows=0)
    assert slower.chosen_new < 37 and slower.train_seconds <= 100.0
    # No time left: nothing, unless forced to a minimum; new pairs first, then already-trained ones (replay).
    assert fit_plan(settings, order, 40, step, available_seconds=-5.0, heldout_rows=0, fixed_rows=0).chosen_ids == []
    assert len(fit_plan(settings, order, 40, step, available_seconds=-5.0, heldout_rows=0, fixed_rows=0,
                        minimum=8).chosen_ids) == 8
    mixed = fit_plan(settings, order, 30, step, available_seconds=None, heldout_rows=0, fixed_rows=0)
    assert (mixed.chosen_new, mixed.replay, mixed.kept) == (30, 10, 0)
    assert "(+10 already learned)" in mixed.line()


def test_untrained_pairs_come_first_spread_over_documents(settings, store):
    old = add_pairs(store, 6, trained=True, prefix="old")
    new = add_pairs(store, 6, prefix="new", docs=3)
    order, untrained = candidate_order(settings, store)
    assert untrained == 6 and set(order[:6]) == set(new) and set(order[6:]) == set(old)
    assert {store.query("SELECT document_id FROM qa_pairs WHERE id = ?", (i,))[0]["document_id"]
            for i in order[:3]} == {"d0", "d1", "d2"}  # the first three come from three documents
    capped, _ = candidate_order(settings.model_copy(update={"max_train_pairs": 4}), store)
    assert capped == order[:4]
    assert mark_trained(store, order[:2], "2026-02-01") == 2
    assert mark_trained(store, order[:3], "2026-03-01") == 1  # already-marked pairs keep their first date
    assert candidate_order(settings, store)[1] == 3


def test_trim_keeps_chosen_pairs_their_not_found_rows_and_feedback(tmp_path):
    path = tmp_path / "sft_train.jsonl"
    rows = [{"id": "a", "source": "distilled"}, {"id": "b", "source": "distilled"}, {"id": "a-nf", "source": "not_found"},
            {"id": "b-nf", "source": "not_found"}, {"id": "c", "source": "refusal"}, {"id": "i1", "source": "feedback_up"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert trim_train_file(path, ["a", "c"]) == {"distilled": 1, "not_found": 1, "refusal": 1, "feedback_up": 1}
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "a-nf", "c", "i1"]


def test_step_time_is_the_median_gap_between_consecutive_steps(tmp_path):
    path = tmp_path / "losses.jsonl"
    rows = [{"step": 1, "loss": 2.0, "time": 9.0},  # warm-up: no predecessor, not counted
            {"step": 2, "loss": 1.9, "time": 16.0}, {"step": 3, "loss": 1.8, "time": 23.0},
            {"step": 3, "eval_loss": 1.7, "time": 40.0},
            {"step": 4, "loss": 1.7, "time": 50.0},  # an evaluation in between: an outlier
            {"step": 5, "loss": 1.6, "time": 57.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert step_seconds_from_losses(path) == 7.0
    assert step_seconds_from_losses(tmp_path / "missing.jsonl") is None


def test_progress_lines_carry_the_step_time_and_eta_and_status_shows_them(settings, store):
    from agent.status import collect_status
    from training.cycle import PROGRESS_KEY, _train_progress

    lines: list[str] = []
    kept: dict = {}
    relay = _train_progress(lines.append, lambda **fields: kept.update(fields))
    relay({"event": "start", "step": 0, "max_steps": 20})
    relay({"event": "step", "step": 2, "max_steps": 20, "loss": 1.5, "time": 14.0})
    assert lines == ["training step 2/20, loss 1.500 · 7.0 s/step · ETA 2.1 min"]
    assert kept["eta_seconds"] == 126 and kept["seconds_per_step"] == 7.0 and kept["eta_at"]

    assert collect_status(settings, store)["cycle"] is None  # nothing running
    with store.transaction() as conn:
        conn.execute("INSERT INTO training_runs (id, trigger, status, stage, started_at) "
                     "VALUES ('r1', 'slack:U1', 'running', 'train', ?)", (now(),))
    store.set_kv(PROGRESS_KEY, json.dumps({"run_id": "r1", "stage": "train", "plan": "training 3 of 9 new pairs, …",
                                           **kept}))
    cycle = collect_status(settings, store)["cycle"]
    assert cycle["stage"] == "train" and cycle["plan"].startswith("training 3 of 9") and cycle["eta_at"] == kept["eta_at"]
    with store.transaction() as conn:  # a dead run's progress is not shown
        conn.execute("UPDATE training_runs SET status = 'failed' WHERE id = 'r1'")
    assert collect_status(settings, store)["cycle"] is None


def test_child_processes_run_at_lower_priority(tmp_path):
    import os

    from training.train import run_process

    command = [sys.executable, "-c", "import os; print('NICE', os.nice(0))"]
    code, _, tail = run_process(command, tmp_path / "log.txt", nice=5)
    assert code == 0 and f"NICE {min(19, os.nice(0) + 5)}" in tail  # 5 above this process (19 at most)


def test_gate_child_settings_round_trip(settings):
    from storage.config import Settings
    from training.gate_process import settings_fields

    fields = settings_fields(settings)
    assert "anthropic_api_key" not in fields and "slack_bot_token" not in fields
    assert Settings(**fields).model_dump(exclude={"anthropic_api_key", "openai_api_key", "slack_bot_token",
                                                  "slack_app_token", "slack_signing_secret"}) == \
        settings.model_dump(exclude={"anthropic_api_key", "openai_api_key", "slack_bot_token", "slack_app_token",
                                     "slack_signing_secret"})


@pytest.fixture
def budget_settings(handbook_home, settings):
    shutil.copytree(handbook_home, settings.home, dirs_exist_ok=True)
    return settings.model_copy(update={"gate_max_items": 4, "gate_max_new_tokens": 8, "epochs": 1,
                                       "retriever_training": False, "cycle_budget_min": 10})


def test_a_budget_trains_on_a_subset_and_the_next_cycle_takes_the_rest(budget_settings, monkeypatch):
    """With 120 s a step and 10 minutes, only a few steps fit: the cycle trains on part of the new pairs,
    says so before training, and leaves the rest untrained in the database; the next cycle, with time to
    spare, takes exactly those first. Ignoring the budget would train on every pair the first time."""
    from training.cycle import run_cycle

    pace = {"step": StepTime(seconds_per_step=120.0, startup_seconds=0.0, source="test")}
    monkeypatch.setattr(budget, "recorded_step_time", lambda settings, store: pace["step"])
    monkeypatch.setattr(budget, "gate_seconds", lambda store, items: (0.0, "test"))
    store = Store(budget_settings.db_path)
    lines: list[str] = []
    result = run_cycle(budget_settings, store, on_progress=lines.append)
    assert result.status == "succeeded", result.error

    plan = result.counts["budget"]
    total = store.scalar("SELECT COUNT(*) FROM qa_pairs WHERE split = 'train'")
    assert plan["new_pairs"] == total > 0 and 0 < plan["chosen_new"] < total and plan["kept"] == total - plan["chosen_new"]
    assert plan["steps"] * 120 <= 600  # training fits what was left of ten minutes
    shown = [line for line in lines if PLAN_LINE.match(line)]
    assert shown, lines  # the estimate, before training started
    assert lines.index(shown[0]) < next(i for i, line in enumerate(lines) if line.startswith("train…"))
    chosen, of, per_step, steps, kept = PLAN_LINE.match(shown[0]).groups()
    assert (int(chosen), int(of), float(per_step), int(steps), int(kept)) == \
        (plan["chosen_new"], total, 120.0, plan["steps"], plan["kept"])

    trained = store.scalar("SELECT COUNT(*) FROM qa_pairs WHERE trained_at IS NOT NULL")
    assert trained == plan["chosen_new"]  # the rest stay, untrained, for the next cycle
    train_file = result.counts["dataset"]["sft_train.jsonl"]
    adapter = store.query("SELECT data_counts FROM adapters WHERE version = ?", (result.adapter_version,))[0]
    assert json.loads(adapter["data_counts"])["sft_train"] == train_file < total

    pace["step"] = StepTime(seconds_per_step=0.01, startup_seconds=0.0, source="test")  # time to spare now
    again = run_cycle(budget_settings, store, max_steps=1, on_progress=lines.append)
    assert again.status == "succeeded", again.error
    assert again.counts["budget"]["new_pairs"] == plan["kept"] and again.counts["budget"]["chosen_new"] == plan["kept"]
    assert store.scalar("SELECT COUNT(*) FROM qa_pairs WHERE split = 'train' AND trained_at IS NULL") == 0
