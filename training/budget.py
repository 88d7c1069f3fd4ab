"""A cycle bounded by time: which new pairs fit `cycle_budget_min`, and how long training will take.

    order = candidate_order(settings, store, live_chunk_ids)     # new pairs first, spread; then trained ones
    step = recorded_step_time(settings, store) or probe_step_time(settings, dataset_dir)
    plan = fit_plan(settings, order, step, available_seconds=..., heldout_rows=..., fixed_rows=...)
    print(plan.line())   # training 120 of 565 new pairs, est. 14 min (7.1 s/step × 118 steps); 445 kept for the next cycle

The clock runs from the cycle's start: ingest, distillation and the dataset are spent before the plan is
made, so what is left is budget − elapsed − the estimated gate (and preference and retriever stages),
and training gets the rest.

Seconds per step come from the newest adapter trained with the same recipe — base model, LoRA shape,
batch, sequence length, threads, context budget and CPU count (`recipe_key`) — as recorded by
training/train.py (the median time between consecutive optimizer steps; a held-out evaluation between
two steps is an outlier the median ignores), else from a probe: the recipe run for `PROBE_STEPS`
steps on this cycle's data in a throw-away folder (step 1 is warm-up and not counted). The probe costs
one model load and a few steps, once per recipe; its start-up (process, model, tokenising the data)
is measured too. The held-out loss the recipe scores every `save_steps` is added as forward-only work
(`FORWARD_SHARE` of a training example each).

Pairs are chosen in `candidate_order`: pairs never trained on (`qa_pairs.trained_at IS NULL`: the new
and changed sections distillation just read), newest first and round-robin over documents and
sections (training/dataset.py `spread_order`), then already-trained pairs, so a budget with room to
spare still trains on the whole corpus (every adapter starts from the base model). Pairs not chosen
stay in the database with `trained_at` NULL and lead the order next cycle; nothing is deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.config import Settings
from storage.db import Store

log = logging.getLogger(__name__)

PROBE_STEPS = 3  # step 1 warms up; steps 2 and 3 are timed
FORWARD_SHARE = 1 / 3  # an evaluated example (forward only) vs a trained one (forward + backward)
DEFAULT_STARTUP_SECONDS = 20.0  # training process start + model load + save, until a run measures it
DEFAULT_GATE_ANSWER_SECONDS = 6.0  # one gate answer (≤ gate_max_new_tokens tokens), until a cycle measures it
GATE_STARTUP_SECONDS = 15.0  # the gate process's start and model load, until a cycle measures it
PREFERENCE_STEP_FACTOR = 2.0  # a DPO/KTO step runs the policy and its reference: about two SFT steps
TRAINED_SOURCES = ("distilled", "refusal")  # sft_train.jsonl rows that are qa_pairs (id = the pair's id)


def recipe_key(settings: Settings) -> dict[str, Any]:
    """What a training step's duration depends on; a recorded step time is reused only for an equal key."""
    from agent.models import resolve_model

    return {"model": resolve_model(settings), "lora_r": settings.lora_r, "lora_layers": settings.lora_layers,
            "batch_size": settings.batch_size, "grad_accum": settings.grad_accum, "max_seq_len": settings.max_seq_len,
            "train_threads": settings.train_threads, "context_tokens": settings.context_tokens,
            "distractors": settings.distractors, "cpus": os.cpu_count(),
            # A 4-bit base steps at its own speed (bench/qlora.py); absent for the float base, as before.
            **({"quantize": settings.quantize} if settings.quantize != "none" else {})}


def examples_per_step(settings: Settings) -> int:
    """Training examples one optimizer step consumes (batch_size × grad_accum, as the recipe accumulates)."""
    return max(1, settings.batch_size * settings.grad_accum)


def step_seconds_from_losses(path: Path) -> float | None:
    """Median seconds between consecutive optimizer steps in a run's losses.jsonl (rows with `loss`, `step`,
    `time` = seconds since the session began), or None with fewer than two consecutive steps. The first
    step of a session (warm-up) has no predecessor and is never counted; an evaluation or a checkpoint
    between two steps makes one long gap, which the median ignores."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [(r["step"], r["time"]) for r in rows if "loss" in r and "time" in r and "step" in r]
    gaps = [t1 - t0 for (s0, t0), (s1, t1) in zip(steps, steps[1:]) if s1 == s0 + 1 and t1 > t0]
    return statistics.median(gaps) if gaps else None


@dataclass
class StepTime:
    """How long the recipe takes: `seconds_per_step` per optimizer step, `startup_seconds` once per run."""

    seconds_per_step: float
    startup_seconds: float
    source: str  # "v0003" (the adapter whose run measured it) | "probe"


def recorded_step_time(settings: Settings, store: Store, *, look_back: int = 20) -> StepTime | None:
    """The step time the newest SFT adapter with this recipe recorded (training/train.py), or None."""
    key = recipe_key(settings)
    rows = store.query("SELECT version, config FROM adapters ORDER BY created_at DESC LIMIT ?", (look_back,))
    for row in rows:
        try:
            config = json.loads(row["config"] or "{}")
        except ValueError:
            continue
        if config.get("method", "sft") == "sft" and config.get("recipe_key") == key and config.get("seconds_per_step"):
            return StepTime(float(config["seconds_per_step"]),
                            float(config.get("startup_seconds") or DEFAULT_STARTUP_SECONDS), row["version"])
    return None


def probe_step_time(settings: Settings, dataset_dir: Path, steps: int = PROBE_STEPS) -> StepTime | None:
    """Time `steps` steps of the SFT recipe on `dataset_dir`'s train file in a throw-away folder, in the same
    low-priority process a real run gets. None (logged) when the probe fails: the plan is then unbounded and
    the real run reports the error."""
    from training.train import DATA_FILES, build_run_config, run_process

    settings.ensure_dirs()
    folder = Path(tempfile.mkdtemp(prefix="step-probe-", dir=settings.home))
    try:
        cfg = build_run_config(settings, dataset_dir, folder, method="sft", run_id="step-probe", max_steps=steps,
                               init_adapter=None, counts={})
        # No held-out scoring and no checkpoint inside the probe: only steps are timed.
        cfg.eval_file, cfg.save_steps = None, steps + 1
        run_json = folder / "RUN.json"
        cfg.save(run_json)
        started = time.perf_counter()
        returncode, _, tail = run_process([sys.executable, "-m", "training.sft", "--config", str(run_json)],
                                          folder / "train.log", nice=settings.train_nice)
        wall = time.perf_counter() - started
        per_step = step_seconds_from_losses(folder / "losses.jsonl")
        if returncode != 0 or per_step is None:
            log.warning("step-time probe on %s failed (exit %s): %s", dataset_dir / DATA_FILES["sft"], returncode,
                        "\n".join(tail))
            return None
        return StepTime(per_step, max(0.0, wall - steps * per_step), "probe")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_steps(max_steps: int | None) -> int:
    """Steps between checkpoints (and held-out evaluations) of a run: training/train.py's rule."""
    return max(1, min(50, (max_steps or 50) // 2))


def training_seconds(settings: Settings, step: StepTime, rows: int, heldout_rows: int,
                     max_steps: int | None = None) -> tuple[int, float]:
    """(optimizer steps, wall seconds) to train `rows` SFT examples for `settings.epochs`, with the
    held-out loss (`heldout_rows` examples, forward only) scored every `save_steps` and at the end."""
    per_epoch = math.ceil(rows / examples_per_step(settings))
    steps = math.ceil(settings.epochs * per_epoch)
    if max_steps:
        steps = min(steps, max_steps)
    evaluations = (steps // save_steps(max_steps) + 1) if heldout_rows else 0
    per_example = step.seconds_per_step / examples_per_step(settings)
    seconds = step.startup_seconds + steps * step.seconds_per_step + evaluations * heldout_rows * per_example * FORWARD_SHARE
    return steps, seconds


def gate_seconds(store: Store, items: int) -> tuple[float, str]:
    """(seconds, where the rate came from) for the gate: the candidate and what serves (or the base model)
    each answer `items` questions. The rate is the newest cycle's evaluate duration per answer, model load
    included, else `DEFAULT_GATE_ANSWER_SECONDS` + `GATE_STARTUP_SECONDS`."""
    answers = 2 * items
    for run in _recent_runs(store):
        budget = run["counts"].get("budget") or {}
        evaluated = budget.get("gate_answers")
        if evaluated and run["durations"].get("evaluate"):
            return answers * run["durations"]["evaluate"] / evaluated, f"run {run['id']}"
    return GATE_STARTUP_SECONDS + answers * DEFAULT_GATE_ANSWER_SECONDS, "default"


def retriever_seconds(settings: Settings, store: Store) -> float:
    """The newest completed retriever stage's duration (train, gate, switch), 0 without one or when off."""
    if not settings.retriever_training:
        return 0.0
    for run in _recent_runs(store):
        spent = [v for k, v in run["durations"].items() if k.startswith("retriever_")]
        if spent:
            return float(sum(spent))
    return 0.0


def _recent_runs(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    rows = store.query("SELECT id, durations, counts FROM training_runs WHERE status = 'succeeded' "
                       "ORDER BY started_at DESC LIMIT ?", (limit,))
    out = []
    for row in rows:
        try:
            out.append({"id": row["id"], "durations": json.loads(row["durations"] or "{}"),
                        "counts": json.loads(row["counts"] or "{}")})
        except ValueError:
            continue
    return out


def candidate_order(settings: Settings, store: Store, live_chunks: set[str] | None = None) -> tuple[list[str], int]:
    """(train pair ids in the order a budget takes them, how many of all train pairs were never trained on).

    Never-trained pairs first, then trained ones, each newest first and spread over documents and sections;
    capped at `max_train_pairs` (0 = no cap). `live_chunks`: only pairs of these chunks (others belong to
    replaced document versions)."""
    from training.dataset import spread_order

    pairs = store.query("SELECT id, chunk_id, document_id, section, created_at, trained_at FROM qa_pairs "
                        "WHERE split = 'train' ORDER BY created_at, id")
    if live_chunks is not None:
        pairs = [p for p in pairs if p["chunk_id"] in live_chunks]
    new = [p for p in pairs if not p["trained_at"]]
    old = [p for p in pairs if p["trained_at"]]
    order = [p["id"] for p in spread_order(new) + spread_order(old)]
    if settings.max_train_pairs:
        order = order[: settings.max_train_pairs]
    return order, len(new)


@dataclass
class Plan:
    """What one cycle trains on and how long that should take. Seconds are wall-clock estimates."""

    new_pairs: int  # train pairs never trained on before this cycle
    chosen_new: int  # of those, trained on now
    replay: int  # already-trained pairs trained on again (room in the budget; adapters start from the base)
    kept: int  # new pairs left for the next cycle
    rows: int = 0  # SFT examples: chosen pairs + their not-found rows + 👍/correction rows
    steps: int = 0
    seconds_per_step: float | None = None
    step_source: str = ""  # "v0003" | "probe" | "" (not measured)
    train_seconds: float | None = None  # training, start-up and held-out scoring included
    gate_seconds: float = 0.0
    after_gate_seconds: float = 0.0  # preference stages and the retriever stage
    budget_seconds: float | None = None  # None = unbounded
    elapsed_seconds: float = 0.0  # spent before training (ingest, distill, dataset, probe)
    gate_answers: int = 0
    chosen_ids: list[str] = field(default_factory=list)

    @property
    def finish_seconds(self) -> float | None:
        """Estimated seconds from the cycle's start to the end of its last stage."""
        if self.train_seconds is None:
            return None
        return self.elapsed_seconds + self.train_seconds + self.gate_seconds + self.after_gate_seconds

    def line(self) -> str:
        """`training 120 of 565 new pairs, est. 14 min (7.1 s/step × 118 steps); 445 kept for the next cycle`."""
        text = f"training {self.chosen_new} of {self.new_pairs} new pairs"
        if self.replay:
            text += f" (+{self.replay} already learned)"
        if self.train_seconds is None or self.seconds_per_step is None:
            text += f", {self.steps} steps (no step time measured yet: no estimate)"
        else:
            text += (f", est. {minutes(self.train_seconds)} ({self.seconds_per_step:.1f} s/step × {self.steps} steps)")
        if self.kept:
            text += f"; {self.kept} kept for the next cycle"
        if self.budget_seconds and self.finish_seconds is not None:
            text += (f" · budget {minutes(self.budget_seconds)}: {minutes(self.elapsed_seconds)} spent, gate and later "
                     f"stages est. {minutes(self.gate_seconds + self.after_gate_seconds)}, cycle est. "
                     f"{minutes(self.finish_seconds)}")
        return text

    def as_dict(self) -> dict[str, Any]:
        """The plan for training_runs.counts (without the id list)."""
        out = {k: v for k, v in asdict(self).items() if k != "chosen_ids"}
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def minutes(seconds: float) -> str:
    """`14 min` (whole minutes from 10 on), `2.5 min` below, `40 s` under a minute."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    value = seconds / 60
    return f"{value:.0f} min" if value >= 10 else f"{value:.1f} min"


def fit_plan(settings: Settings, order: list[str], new_pairs: int, step: StepTime | None, *,
             available_seconds: float | None, heldout_rows: int, fixed_rows: int,
             max_steps: int | None = None, minimum: int = 0) -> Plan:
    """The longest prefix of `order` whose training fits `available_seconds` (None = unbounded, or unknown
    step time: all of `order`), never fewer than `minimum` pairs. `fixed_rows`: SFT rows that come with any
    choice (👍 answers, corrections); each chosen pair brings `notfound_fraction` of a not-found row."""
    new_ids = new_pairs  # the first `new_pairs` of `order` (at most) are the never-trained ones

    def rows(n: int) -> int:
        return n + round(settings.notfound_fraction * n) + fixed_rows

    chosen = len(order)
    if step is not None and available_seconds is not None:
        while chosen > 0 and training_seconds(settings, step, rows(chosen), heldout_rows, max_steps)[1] > available_seconds:
            chosen -= 1
    chosen = max(chosen, min(minimum, len(order)))
    chosen_new = min(chosen, new_ids, len(order))
    plan = Plan(new_pairs=new_pairs, chosen_new=chosen_new, replay=chosen - chosen_new, kept=new_pairs - chosen_new,
                rows=rows(chosen), chosen_ids=order[:chosen])
    if step is not None:
        plan.steps, plan.train_seconds = training_seconds(settings, step, plan.rows, heldout_rows, max_steps)
        plan.seconds_per_step, plan.step_source = step.seconds_per_step, step.source
    else:
        per_epoch = math.ceil(plan.rows / examples_per_step(settings))
        plan.steps = min(math.ceil(settings.epochs * per_epoch), max_steps or sys.maxsize)
    return plan


def trim_train_file(path: Path, chosen_ids: list[str]) -> dict[str, int]:
    """Keep in sft_train.jsonl only the chosen pairs' rows (and the not-found rows built from them); 👍 and
    correction rows stay. Order is kept (the builder shuffled it). Returns {source: rows kept}."""
    chosen = set(chosen_ids)
    kept: list[str] = []
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        source = str(row.get("source", ""))
        pair_id = str(row.get("id", ""))
        if source == "not_found":
            pair_id = pair_id.removesuffix("-nf")
        if (source in TRAINED_SOURCES or source == "not_found") and pair_id not in chosen:
            continue
        kept.append(line)
        counts[source] = counts.get(source, 0) + 1
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return counts


def mark_trained(store: Store, pair_ids: list[str], when: str) -> int:
    """Record that a completed training used these pairs (only those not marked before keep `when`)."""
    if not pair_ids:
        return 0
    return store.mark_qa_pairs_trained(pair_ids, when)


def plan_cycle(settings: Settings, store: Store, dataset_dir: Path, order: list[str], new_pairs: int,
               gate_items: int, *, started: float, max_steps: int | None = None, force: bool = False) -> Plan:
    """The cycle's training plan once its dataset is built (`dataset_dir`, train file holding `order`'s pairs).

    Step time: the last run's with this recipe, else a probe when there is a budget to fit (not for capped
    smoke runs, `max_steps`). Reserved after training: the gate on `gate_items` questions, the preference
    stages the data allows and the last retriever stage. `started` is the cycle's `time.perf_counter()` at
    its start. `force` trains on at least `min_new_pairs` pairs (or all there are) even over budget."""
    from training.train import DATA_FILES, HELDOUT_FILE, count_lines, preference_stages
    from training.sft import EVAL_MAX_ROWS

    budget = settings.cycle_budget_min * 60 or None
    step = recorded_step_time(settings, store)
    if step is None and budget and not max_steps:
        step = probe_step_time(settings, dataset_dir)
    train_file = dataset_dir / DATA_FILES["sft"]
    fixed = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("source") not in (*TRAINED_SOURCES, "not_found"))
    gate, _ = gate_seconds(store, gate_items)
    after = retriever_seconds(settings, store)
    if step is not None:
        for method in preference_stages(settings, dataset_dir):  # one epoch each, continuing the SFT adapter
            stage_steps = math.ceil(count_lines(dataset_dir / DATA_FILES[method]) / examples_per_step(settings))
            after += step.startup_seconds + stage_steps * step.seconds_per_step * PREFERENCE_STEP_FACTOR
    elapsed = time.perf_counter() - started
    available = budget - elapsed - gate - after if budget else None
    minimum = min(settings.min_new_pairs, len(order)) if force else 0
    plan = fit_plan(settings, order, new_pairs, step, available_seconds=available,
                    heldout_rows=min(count_lines(dataset_dir / HELDOUT_FILE), EVAL_MAX_ROWS), fixed_rows=fixed,
                    max_steps=max_steps,
                    minimum=minimum)
    plan.gate_seconds, plan.after_gate_seconds, plan.budget_seconds = gate, after, budget
    plan.elapsed_seconds, plan.gate_answers = elapsed, 2 * gate_items
    return plan
