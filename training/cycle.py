"""One turn of the flywheel: refresh ingest → distill → datasets → train → evaluate → promote → retriever.

    flywheel cycle [--teacher offline|anthropic] [--max-pairs 64] [--force]

The evaluate step is the gate (training/gate.py) on `gate_questions`: held-out distilled pairs and 👍
answers (plus any admin QA items passed in); it promotes only a significant gain (`--force` here means
"train on little new data", never "skip the gate").

The cycle is bounded by `cycle_budget_min` (training/budget.py): after the dataset is built it estimates
training from the measured seconds per step, trains on the new pairs that fit (new and changed sections
first, spread over documents and sections), says so before training starts ("training 120 of 565 new
pairs, est. 14 min (7.1 s/step × 118 steps); 445 kept for the next cycle") and keeps the rest for the
next cycle (`qa_pairs.trained_at` stays NULL). Training reports progress with an ETA; the plan, the
stage and the ETA are also kept in kv `cycle_progress`, which `flywheel status` shows while a cycle
runs. Training and the gate run in child processes at `train_nice` with `train_threads` threads.

After the adapter, unless `retriever_training` is off, the embedder learns from the same distilled pairs
(training/retriever.py): train → its own gate (hit@1 on held-out questions) → if promoted, its corpus
collection is built in the background and serving switches once it is complete.

The same function runs from the CLI, the Slack `/flywheel retrain` command and the scheduler.
Never two cycles at once, even across processes (a file lock the OS releases if a process dies);
every run is a `training_runs` row with its status, stage durations, counts and error; a crash
anywhere leaves serving untouched (only the gate promotes), and the next run marks the crashed
run as failed before starting its own.
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.config import Settings
from storage.db import Store, new_id, now
from storage.knowledge import KnowledgeBase

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class CycleResult:
    run_id: str | None
    status: str  # succeeded | skipped | failed | busy
    stage: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    adapter_version: str | None = None
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retriever_version: str | None = None
    retriever_promoted: bool = False
    retriever_reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for Slack and the terminal."""
        if self.status == "busy":
            return "A flywheel cycle is already running; not starting another."
        if self.status == "skipped":
            return f"Cycle skipped: {'; '.join(self.reasons)}"
        if self.status == "failed":
            if self.promoted:  # the retriever stage failed after the adapter gate had promoted
                return (f"Cycle failed during {self.stage}: {self.error}. Adapter {self.adapter_version} was "
                        "promoted before that; the retriever is unchanged.")
            return f"Cycle failed during {self.stage}: {self.error}. Serving is unchanged."
        verdict = "promoted" if self.promoted else "not promoted"
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        total = sum(self.durations.values())
        line = f"Cycle done in {total / 60:.1f} min: adapter {self.adapter_version} {verdict}{why}."
        if self.retriever_version:
            verdict = "promoted and serving" if self.retriever_promoted else "not promoted"
            why = f" ({'; '.join(self.retriever_reasons)})" if self.retriever_reasons else ""
            line += f" Retriever {self.retriever_version} {verdict}{why}."
        return line


def cycle_lock(settings: Settings):
    from filelock import FileLock

    settings.ensure_dirs()
    return FileLock(str(settings.home / "cycle.lock"))


def heldout_questions(store: Store, limit: int, seed: int = 0) -> list[dict[str, Any]]:
    """The fixed held-out distilled pairs (never trained on), a stable sample of at most `limit`."""
    rows = store.query("SELECT id, question, answer FROM qa_pairs WHERE split = 'heldout' ORDER BY id")
    random.Random(seed).shuffle(rows)
    return [{"id": r["id"], "question": r["question"], "answer": r["answer"], "origin": "heldout"}
            for r in rows[:limit]]


def feedback_questions(store: Store, limit: int) -> list[dict[str, Any]]:
    """Answers users liked (net vote > 0), newest vote first: the question (as condensed for retrieval, so
    a follow-up stands alone) with the answer they saw as the reference. Refusals are left out: a 👍 on
    "I couldn't find this" may thank the list of closest passages, not confirm that the docs are silent."""
    rows = store.query(
        """SELECT i.id, i.question, i.condensed_question, i.answer, SUM(f.vote) AS net, MAX(f.updated_at) AS voted
           FROM interactions i JOIN feedback f ON f.interaction_id = i.id
           WHERE i.grounded = 1 AND COALESCE(i.route, 'question') = 'question'
             AND COALESCE(i.produced_by, 'model') != 'refusal' AND i.surface != 'eval'
           GROUP BY i.id HAVING net > 0 ORDER BY voted DESC, i.id LIMIT ?""",
        (limit,),
    )
    return [{"id": f"feedback:{r['id']}", "question": r["condensed_question"] or r["question"], "answer": r["answer"],
             "origin": "feedback"} for r in rows]


def gate_questions(store: Store, limit: int, qa: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What the gate asks: every item of the admin's QA file(s), then 👍 answers and held-out distilled pairs,
    up to `limit` of those two together (each gets half; either fills what the other can't). A question
    already asked (same words, any case) is asked once, the earlier source winning.

    👍 answers join the SFT train file too (training/dataset.py), so on them the gate measures whether the
    candidate keeps what users liked; the distilled held-out pairs measure generalisation."""
    from training.gate import unique_questions

    admin = [{**item, "origin": item.get("origin", "qa")} for item in qa or []]
    liked = feedback_questions(store, limit)
    heldout = heldout_questions(store, limit)
    take_liked = min(len(liked), max(limit // 2, limit - len(heldout)))
    return unique_questions(admin + liked[:take_liked] + heldout[: limit - take_liked])


TRAINED_UNTIL_KEY = "trained_data_until"  # when the data of the last completed training was gathered
PROGRESS_KEY = "cycle_progress"  # JSON: the running cycle's stage, plan and training ETA (agent/status.py)


def _new_training_signal(store: Store) -> dict[str, int]:
    """Train pairs no completed training has used yet (new, or kept back by an earlier cycle's budget) and
    votes that arrived after the data of the last completed training was gathered."""
    since = store.get_kv(TRAINED_UNTIL_KEY) or ""
    pairs = store.scalar("SELECT COUNT(*) FROM qa_pairs WHERE split = 'train' AND trained_at IS NULL "
                         "AND chunk_id IN (SELECT id FROM chunks)") or 0
    votes = store.scalar("SELECT COUNT(*) FROM feedback WHERE vote != 0 AND updated_at > ?", (since,)) or 0
    return {"new_pairs": pairs, "new_votes": votes}


def _close_stale_runs(store: Store) -> int:
    """Runs still marked 'running' while we hold the lock were interrupted (crash, kill, reboot)."""
    stale = store.query("SELECT id FROM training_runs WHERE status = 'running'")
    for row in stale:
        store.update_training_run(row["id"], status="failed", error="interrupted (process ended mid-cycle)",
                                  finished_at=now())
    return len(stale)


def run_cycle(
    settings: Settings,
    store: Store | None = None,
    *,
    trigger: str = "command",
    teacher_kind: str | None = None,
    max_pairs: int | None = None,
    force: bool = False,
    max_steps: int | None = None,
    on_progress: Progress | None = None,
    qa_extra: list[dict[str, Any]] | None = None,
) -> CycleResult:
    """Run one cycle now, or return status 'busy' at once if another is running anywhere."""
    from filelock import Timeout

    from training.quantize import quantize_problem

    say = on_progress or (lambda message: log.info("%s", message))
    problem = quantize_problem(settings.quantize, settings.backend)
    if problem:  # e.g. FLYWHEEL_QUANTIZE=nf4 without bitsandbytes: refused before any ingest, distillation or training
        refused = CycleResult(run_id=None, status="failed", stage="settings", error=problem)
        say(refused.summary())
        return refused
    store = store or Store(settings.db_path)
    lock = cycle_lock(settings)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return CycleResult(run_id=None, status="busy")
    try:
        return _run_locked(settings, store, trigger, teacher_kind, max_pairs, force, max_steps, say, qa_extra)
    finally:
        lock.release()


def _run_locked(settings, store, trigger, teacher_kind, max_pairs, force, max_steps, say, qa_extra) -> CycleResult:
    from training.budget import candidate_order, mark_trained, plan_cycle, trim_train_file
    from training.dataset import build_datasets
    from training.distill import distill
    from training.gate_process import run_gate_process
    from training.teachers import load_teacher
    from training.train import preference_stages, train_adapter

    cycle_started = time.perf_counter()  # the budget counts from here: ingest and distill are part of it
    stale = _close_stale_runs(store)
    run_id = new_id()
    result = CycleResult(run_id=run_id, status="running")
    store.start_training_run(run_id, trigger)
    if stale:
        say(f"Marked {stale} interrupted run(s) as failed.")
    kb = KnowledgeBase(settings, store)

    progress: dict[str, Any] = {"run_id": run_id}

    def keep_progress(**fields: Any) -> None:
        """Keep the running cycle's state where `flywheel status` (CLI and Slack) reads it."""
        progress.update(fields, updated_at=now())
        store.set_kv(PROGRESS_KEY, json.dumps(progress))

    def stage(name: str) -> None:
        result.stage = name
        store.update_training_run(run_id, stage=name)
        keep_progress(stage=name)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        stage(name)
        say(f"{name}…")
        started = time.perf_counter()
        value = fn()
        result.durations[name] = round(time.perf_counter() - started, 1)
        return value

    try:
        paths = [Path(d["path"]) for d in store.query("SELECT path FROM documents WHERE status != 'failed'")]
        ingest = timed("ingest", lambda: kb.ingest([p for p in paths if p.exists()]))
        result.counts["ingest"] = {s: ingest.count(s) for s in ("added", "updated", "unchanged", "failed")}

        teacher = load_teacher(settings, teacher_kind)
        report = timed("distill", lambda: distill(settings, store, teacher, max_pairs=max_pairs))
        result.counts["distill"] = {k: v for k, v in asdict(report).items() if not isinstance(v, dict)}
        result.counts["teacher_usage"] = asdict(teacher.usage)

        signal = _new_training_signal(store)
        result.counts.update(signal)
        if not force and signal["new_pairs"] < settings.min_new_pairs and signal["new_votes"] == 0:
            result.status = "skipped"
            result.reasons = [f"{signal['new_pairs']} new training pairs and no new votes "
                              f"(need {settings.min_new_pairs}; --force to train anyway)"]
            return _finish(store, result)

        data_cutoff = now()
        live = {row["id"] for row in store.query("SELECT id FROM chunks")}
        order, new_pairs = candidate_order(settings, store, live)
        data = timed("dataset", lambda: build_datasets(settings, store, kb, teacher=teacher, train_ids=order))
        qa = gate_questions(store, settings.gate_max_items, qa_extra)
        if not qa:
            raise RuntimeError("no held-out questions to evaluate on (distill some documents first)")
        plan = timed("plan", lambda: plan_cycle(settings, store, Path(data.out_dir), order, new_pairs, len(qa),
                                                started=cycle_started, max_steps=max_steps, force=force))
        result.counts["budget"] = plan.as_dict()
        keep_progress(plan=plan.line(), estimate_seconds=plan.train_seconds)
        wanted = min(settings.min_new_pairs, new_pairs)
        if not force and signal["new_votes"] == 0 and plan.chosen_new < wanted:
            result.status = "skipped"
            result.reasons = [f"the {settings.cycle_budget_min:g}-minute budget leaves room for {plan.chosen_new} of "
                              f"{new_pairs} new pairs (need {wanted}): {plan.line()}. They stay for the next cycle; "
                              "raise FLYWHEEL_CYCLE_BUDGET_MIN or --force"]
            return _finish(store, result)
        trained_rows = trim_train_file(Path(data.out_dir) / "sft_train.jsonl", plan.chosen_ids)
        data.files["sft_train.jsonl"] = sum(trained_rows.values())
        result.counts["dataset"] = data.files
        say(plan.line())

        adapter = timed("train", lambda: train_adapter(settings, store, data.out_dir, run_id=run_id,
                                                       max_steps=max_steps, actor=trigger,
                                                       on_event=_train_progress(say, keep_progress)))
        for method in preference_stages(settings, data.out_dir):  # DPO, then KTO, when there is enough data
            adapter = timed(f"train_{method}", lambda m=method, a=adapter: train_adapter(
                settings, store, data.out_dir, run_id=f"{run_id}-{m}", method=m, max_steps=max_steps,
                init_adapter=a.path, actor=trigger))
        result.adapter_version = adapter.version
        store.update_training_run(run_id, adapter_version=adapter.version)

        gate_settings = settings.model_copy(update={"max_new_tokens": settings.gate_max_new_tokens})
        decision, reports = timed("evaluate", lambda: run_gate_process(gate_settings, adapter.version, qa,
                                                                       actor=trigger, include_base=False))
        result.promoted, result.reasons = decision.promote, list(decision.reasons)
        # The next cycle's gate estimate: answers given in the evaluate stage's measured duration.
        result.counts["budget"]["gate_answers"] = sum(int(r.get("n") or 0) for r in reports.values())
        store.set_kv(TRAINED_UNTIL_KEY, data_cutoff)  # promoted or not, this data has been learned from
        result.counts["budget"]["marked_trained"] = mark_trained(store, plan.chosen_ids, data_cutoff)
        result.metrics = {name: {k: v for k, v in report.items() if isinstance(v, (int, float))}
                          for name, report in reports.items()}
        if settings.retriever_training:
            _retriever_stage(settings, store, kb, result, timed, say, trigger, run_id, max_steps, qa_extra)
        result.status = "succeeded"
        say(result.summary())
        return _finish(store, result)
    except Exception as exc:
        log.exception("flywheel cycle %s failed in %s", run_id, result.stage)
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        store.update_training_run(run_id, error=traceback.format_exc()[-4000:])
        say(result.summary())
        return _finish(store, result, keep_error=True)


def _retriever_stage(settings: Settings, store: Store, kb: KnowledgeBase, result: CycleResult,
                     timed: Callable[[str, Callable[[], Any]], Any], say: Progress, trigger: str, run_id: str,
                     max_steps: int | None, qa_extra: list[dict[str, Any]] | None) -> None:
    """Train a retriever on the distilled pairs (hard negatives from today's index), gate it on retrieval
    and, when it is better, build its collection in the background and switch to it. Answers keep using
    the old embedder and collection until the switch flips; the cycle waits for it (it holds the lock)."""
    from training.retriever import gate_retriever, reject, start_switch, train_retriever

    record = timed("retriever_train", lambda: train_retriever(
        settings, store, kb, run_id=f"{run_id}-retriever", max_steps=max_steps, actor=trigger,
        on_event=_train_progress(say), on_progress=_step_progress(say)))
    result.retriever_version = record.version
    try:
        decision, reports, vectors = timed("retriever_gate", lambda: gate_retriever(
            settings, store, kb, record.version, qa_extra, actor=trigger, on_progress=_step_progress(say)))
    except ValueError as exc:  # no held-out question with a known passage: nothing to decide on
        reject(store, record.version, trigger, reason=str(exc))
        result.retriever_reasons = [str(exc)]
        return
    result.retriever_reasons = list(decision.reasons)
    numbers = ("n", "hit@1", "hit@5", "mrr", "dense_hit@1", "dense_hit@5", "dense_mrr", "below_min_relevance")
    result.metrics["retriever"] = {
        "version": record.version, "promoted": decision.promote, "reasons": decision.reasons,
        **{name: {k: report[k] for k in numbers if k in report} | {"label": report["label"]}
           for name, report in reports.items()},
        "delta": decision.delta, "ci": [decision.ci_low, decision.ci_high], "p_value": decision.p_value}
    if decision.promote:
        timed("retriever_switch", lambda: start_switch(settings, store, record.version, trigger, vectors=vectors,
                                                       on_progress=_step_progress(say)).wait())
        result.retriever_promoted = True


def _step_progress(say: Progress) -> Callable[[str, int, int], None]:
    """Relay a (what, done, total) progress callback as about ten lines per phase."""
    state: dict[str, int] = {}

    def relay(what: str, done: int, total: int) -> None:
        tenth = int(10 * done / max(total, 1))
        if tenth > state.get(what, -1):
            state[what] = tenth
            say(f"{what}: {done}/{total}")

    return relay


def _finish(store: Store, result: CycleResult, keep_error: bool = False) -> CycleResult:
    store.set_kv(PROGRESS_KEY, None)  # nothing running any more; the run's row keeps the plan (counts.budget)
    update: dict[str, Any] = {
        "status": result.status,
        "finished_at": now(),
        "durations": json.dumps(result.durations),
        "counts": json.dumps(result.counts, default=str),
        "metrics": json.dumps({"promoted": result.promoted, "reasons": result.reasons, **result.metrics}),
    }
    if not keep_error:
        update["error"] = result.error
    store.update_training_run(result.run_id, **update)
    return result


def _train_progress(say: Progress, report: Callable[..., None] | None = None) -> Callable[[dict[str, Any]], None]:
    """Relay about ten progress lines per training run (Slack threads shouldn't get one per step), each with
    the measured seconds per step and the ETA of the rest of the run; `report` also gets every step's
    numbers (the cycle keeps them for `flywheel status`)."""
    from training.budget import minutes

    state: dict[str, float] = {"last": -1, "first_step": 0}

    def relay(event: dict[str, Any]) -> None:
        if event.get("event") == "start":  # a resumed run starts at its checkpoint's step
            state["first_step"] = float(event.get("step") or 0)
            return
        if event.get("event") != "step" or not event.get("max_steps"):
            return
        step, total = int(event["step"]), int(event["max_steps"])
        done = step - state["first_step"]
        # `time` is seconds since this session's training began: the rate includes warm-up and the periodic
        # held-out scoring, so the ETA is what the rest of the run will really take, not the bare step time.
        rate = float(event["time"]) / done if event.get("time") and done > 0 else None
        eta = rate * (total - step) if rate is not None else None
        if report is not None:
            report(step=step, max_steps=total, seconds_per_step=round(rate, 2) if rate else None,
                   eta_seconds=round(eta) if eta is not None else None,
                   eta_at=_at(eta) if eta is not None else None)
        tenth = int(10 * step / total)
        if tenth > state["last"]:
            state["last"] = tenth
            loss = event.get("loss")
            line = f"training step {step}/{total}" + (f", loss {loss:.3f}" if loss else "")
            if rate is not None and eta is not None:
                line += f" · {rate:.1f} s/step · ETA {minutes(eta)}"
            say(line)

    return relay


def _at(seconds_from_now: float) -> str:
    """An ISO time `seconds_from_now` from now (UTC, like every timestamp the store keeps)."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat(timespec="seconds")
