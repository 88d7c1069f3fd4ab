"""Train a new adapter version in a separate process and register it as a candidate.

    flywheel train --dataset ~/.flywheel/datasets/latest [--method sft|dpo|kto] [--max-steps N]

    from training.train import train_adapter
    record = train_adapter(settings, store, dataset_dir)          # -> AdapterRecord(version="v0004", ...)
    for method in preference_stages(settings, dataset_dir):       # "dpo", "kto": when there is enough data
        record = train_adapter(settings, store, dataset_dir, method=method, init_adapter=record.path)

Why a subprocess: training must start from a freshly loaded base model, never the one serving
answers (its weights may carry a hot-swapped adapter, and on CPU bitsandbytes/inference paths
leave state that silently corrupts gradients — see the stack notes). A separate process also
means a crash or an OOM kill takes down the run, not the bot, and memory is returned afterwards.

The run's folder is the adapter's folder: `adapters/vNNNN/` holds RUN.json, train.log,
losses.jsonl, checkpoints/ while training, and finally the adapter + tokenizer + flywheel.json.
Calling `train_adapter` again with the same `run_id` after a crash reuses that folder and the
recipe resumes from its last checkpoint.

Several GPUs: run the same recipe under accelerate, unchanged:
    accelerate launch -m training.sft --config ~/.flywheel/adapters/v0004/RUN.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.models import resolve_model
from storage.config import Settings, scrubbed_environment
from storage.db import Store, new_id
from training.budget import recipe_key, save_steps, step_seconds_from_losses
from training.quantize import quantize_problem
from training.registry import AdapterRecord, next_version, register
from training.sft import EVENT_PREFIX, RunConfig

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_FILES = {"sft": "sft_train.jsonl", "dpo": "dpo.jsonl", "kto": "kto.jsonl"}
HELDOUT_FILE = "sft_heldout.jsonl"  # SFT's eval_dataset: validation loss next to the training loss
STALL_SECONDS = 1800.0  # no output at all for this long = hung (a real step takes seconds)


class TrainingError(RuntimeError):
    """A training run that did not produce an adapter; the message ends with the log tail."""


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open() as handle:
        return sum(1 for line in handle if line.strip())


def data_counts(dataset_dir: Path) -> dict[str, int]:
    """Examples per file of a dataset folder (what the adapter was trained and judged on)."""
    names = {"sft_train": "sft_train.jsonl", "sft_heldout": HELDOUT_FILE, "dpo": "dpo.jsonl", "kto": "kto.jsonl"}
    return {key: count_lines(dataset_dir / name) for key, name in names.items()}


def kto_labels(path: Path) -> dict[bool, int]:
    """Rows per label of a kto.jsonl ({True: 👍 drafts, False: 👎 drafts})."""
    counts = {True: 0, False: 0}
    if path.is_file():
        with path.open() as handle:
            for line in handle:
                if line.strip():
                    counts[bool(json.loads(line).get("label"))] += 1
    return counts


def preference_stages(settings: Settings, dataset_dir: str | Path) -> list[str]:
    """The stages after SFT that `dataset_dir` has enough data for, in the order to run them, each
    continuing the previous stage's adapter: "dpo" with `min_dpo_pairs` pairs, then "kto" with
    `kto_min_rows` voted drafts of both labels (KTO's loss weighs 👍 against 👎: one label alone
    only pushes the model one way, away from its reference)."""
    folder = Path(dataset_dir).expanduser()
    stages = []
    if count_lines(folder / DATA_FILES["dpo"]) >= settings.min_dpo_pairs:
        stages.append("dpo")
    labels = kto_labels(folder / DATA_FILES["kto"])
    if sum(labels.values()) >= settings.kto_min_rows and all(labels.values()):
        stages.append("kto")
    return stages


def _run_dir_for(settings: Settings, store: Store, run_id: str) -> tuple[str, Path]:
    """The folder of an earlier, unfinished attempt of `run_id` (to resume), else a fresh version."""
    if settings.adapters_dir.is_dir():
        for folder in sorted(settings.adapters_dir.iterdir()):
            run_json = folder / "RUN.json"
            if run_json.is_file() and store.adapter(folder.name) is None:
                try:
                    extra = json.loads(run_json.read_text()).get("extra", {})
                except ValueError:
                    continue
                if extra.get("run_id") == run_id:
                    return folder.name, folder
    version = next_version(settings, store)
    folder = settings.adapters_dir / version
    folder.mkdir(parents=True, exist_ok=False)  # exist_ok=False: two runs never share a version
    return version, folder


def build_run_config(
    settings: Settings, dataset_dir: Path, output_dir: Path, *, method: str, run_id: str,
    max_steps: int | None, init_adapter: str | None, counts: dict[str, int],
) -> RunConfig:
    heldout = dataset_dir / HELDOUT_FILE
    return RunConfig(
        model=resolve_model(settings),
        train_file=str(dataset_dir / DATA_FILES[method]),
        output_dir=str(output_dir),
        eval_file=str(heldout) if method == "sft" and count_lines(heldout) else None,
        init_adapter=init_adapter,
        method=method,
        lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        lora_layers=settings.lora_layers,
        learning_rate=settings.learning_rate if method == "sft" else settings.learning_rate / 4,
        epochs=settings.epochs if method == "sft" else 1,
        max_steps=max_steps or -1,
        batch_size=settings.batch_size,
        grad_accum=settings.grad_accum,
        max_seq_len=settings.max_seq_len,
        threads=settings.train_threads,
        quantize=settings.quantize,
        # A checkpoint (and a held-out evaluation) every 25 steps, half-way through a short capped run.
        save_steps=save_steps(max_steps),
        extra={"run_id": run_id, "dataset_dir": str(dataset_dir), "data_counts": counts},
    )


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def lower_priority(nice: int) -> Callable[[], None] | None:
    """A `preexec_fn` that adds `nice` to the child's niceness (POSIX), or None for 0 / no os.nice.

    Runs in the forked child before exec: one system call, no locks and no allocation to speak of, so it
    is safe although the bot forks from worker threads. A child at niceness 10 still gets all idle CPU,
    but answers at niceness 0 win the cores whenever they want them."""
    if nice <= 0 or not hasattr(os, "nice"):
        return None

    def renice() -> None:
        os.nice(nice)

    return renice


def run_process(
    command: list[str], log_path: Path, *, on_event: Callable[[dict[str, Any]], None] | None = None,
    stall_seconds: float = STALL_SECONDS, env: dict[str, str] | None = None, nice: int = 0,
) -> tuple[int, list[dict[str, Any]], deque[str]]:
    """Run `command`, streaming its output to `log_path`; returns (returncode, events, log tail).

    A process silent for `stall_seconds` is killed (returncode -SIGKILL) instead of hanging forever.
    `nice` > 0 runs it at that much lower CPU priority (`settings.train_nice` for training and the gate).
    """
    # Scrubbed: training never talks to Slack or a model API, so it gets neither their tokens nor keys.
    environment = {**scrubbed_environment(), "PYTHONUNBUFFERED": "1", **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")]))
    events: list[dict[str, Any]] = []
    tail: deque[str] = deque(maxlen=40)
    # text=True means universal newlines: tqdm's carriage-return updates arrive as separate lines.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               cwd=str(PROJECT_ROOT), env=environment, preexec_fn=lower_priority(nice))
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    with log_path.open("a") as sink:
        sink.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        while True:
            try:
                line = lines.get(timeout=stall_seconds)
            except queue.Empty:
                tail.append(f"[flywheel] no output for {stall_seconds:.0f} s: killing the training process")
                process.send_signal(signal.SIGKILL)
                break
            if line is None:
                break
            sink.write(line + "\n")
            # tqdm's bar shares the stream without a trailing newline, so an event can start mid-line.
            at = line.find(EVENT_PREFIX)
            if at >= 0:
                try:
                    event = json.loads(line[at + len(EVENT_PREFIX):])
                except ValueError:
                    continue
                events.append(event)
                if on_event:
                    on_event(event)
            elif line.strip():
                tail.append(line)
    return process.wait(), events, tail


def describe_failure(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        hint = " (SIGKILL usually means the out-of-memory killer: lower batch_size or max_seq_len)" \
            if returncode == -signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def finished_run(store: Store, actor: str, returncode: int, tail: list[str], folder: Path, *, label: str,
                 failed: str, version: str, run_id: str) -> dict[str, Any]:
    """The summary (flywheel.json) a finished training process left in `folder`. A process that failed,
    was killed or hung, or exited without writing it is audited as `failed` and raised as TrainingError:
    `label`, the reason, where to resume from and the log's tail (adapters' and retrievers' runs alike)."""
    summary_path = folder / "flywheel.json"
    if returncode != 0 or not summary_path.is_file():
        reason = describe_failure(returncode) if returncode != 0 else "finished without writing flywheel.json"
        store.audit(actor, failed, {"version": version, "run_id": run_id, "returncode": returncode})
        raise TrainingError(
            f"{label} {reason}. Checkpoints and train.log are kept in {folder}; "
            f"rerun with run_id={run_id!r} to resume.\n--- last lines of the log ---\n" + "\n".join(tail)
        )
    return json.loads(summary_path.read_text())


def read_losses(output_dir: Path) -> list[dict[str, Any]]:
    """The loss curve: one row per logged step with `loss` and, where the held-out set was scored,
    `eval_loss` (a resumed run's rows are de-duplicated by step)."""
    rows: dict[int, dict[str, Any]] = {}
    path = output_dir / "losses.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                merged = rows.setdefault(row["step"], {"step": row["step"]})
                merged.update({k: row[k] for k in ("loss", "eval_loss", "epoch") if k in row})
    return [rows[k] for k in sorted(rows)]


def train_adapter(
    settings: Settings,
    store: Store,
    dataset_dir: str | Path,
    *,
    run_id: str | None = None,
    method: str = "sft",
    max_steps: int | None = None,
    init_adapter: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    stall_seconds: float = STALL_SECONDS,
    env: dict[str, str] | None = None,
    actor: str = "training",
) -> AdapterRecord:
    """Train one adapter in a fresh process and register it as a "candidate" version.

    Raises TrainingError (with the log tail) when the process fails, is killed, hangs or produces a
    broken adapter; nothing is registered then, and rerunning with the same `run_id` resumes.
    `on_event` receives the recipe's progress events ({"event": "step", "step", "max_steps", "loss", ...}).
    """
    if method not in DATA_FILES:
        raise ValueError(f"method must be one of {sorted(DATA_FILES)}, not {method!r}")
    problem = quantize_problem(settings.quantize, settings.backend)  # before any folder or process exists
    if problem:
        raise TrainingError(problem)
    dataset_dir = Path(dataset_dir).expanduser().resolve()
    train_file = dataset_dir / DATA_FILES[method]
    if count_lines(train_file) == 0:
        raise TrainingError(f"no training data: {train_file} is missing or empty")
    settings.ensure_dirs()
    run_id = run_id or new_id()
    counts = data_counts(dataset_dir)
    version, output_dir = _run_dir_for(settings, store, run_id)
    cfg = build_run_config(settings, dataset_dir, output_dir, method=method, run_id=run_id, max_steps=max_steps,
                           init_adapter=str(init_adapter) if init_adapter else None, counts=counts)
    run_json = output_dir / "RUN.json"
    cfg.save(run_json)
    store.audit(actor, "train.start", {"version": version, "run_id": run_id, "method": method, "counts": counts})
    command = [sys.executable, "-m", f"training.{method}", "--config", str(run_json)]
    log.info("training %s: %s", version, " ".join(command))

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            log.info("%s step %s/%s loss %.4f", version, event.get("step"), event.get("max_steps"), event.get("loss"))
        if on_event:
            on_event(event)

    started = time.perf_counter()
    returncode, events, tail = run_process(command, output_dir / "train.log", on_event=progress,
                                           stall_seconds=stall_seconds, env=env, nice=settings.train_nice)
    summary = finished_run(store, actor, returncode, tail, output_dir, label=f"training {version} ({method})",
                           failed="train.failed", version=version, run_id=run_id)
    losses = read_losses(output_dir)
    final = summary.get("final_loss")
    if final is None or not math.isfinite(final):
        store.audit(actor, "train.failed", {"version": version, "run_id": run_id, "final_loss": final})
        raise TrainingError(f"training {version} diverged (final loss {final}); the adapter is not registered")
    wall = time.perf_counter() - started
    # What the next cycle's budget plan reuses (training/budget.py): the typical optimizer step, and the
    # rest of this run's wall time (process start, model load, tokenising, held-out scoring, saving) as
    # start-up; with the recipe key, so a changed recipe or machine is measured afresh.
    per_step = step_seconds_from_losses(output_dir / "losses.jsonl")
    steps = int(summary.get("steps_this_session") or 0)
    config = {**summary.get("config", {}), "tokens_per_second": summary.get("tokens_per_second"),
              "eval_loss": summary.get("eval_loss"),
              "train_seconds": round(wall, 1), "resumed_from": summary.get("resumed_from"),
              "seconds_per_step": round(per_step, 3) if per_step else None,
              "startup_seconds": round(max(0.0, wall - steps * per_step), 1) if per_step else None,
              "recipe_key": recipe_key(settings)}
    record = register(settings, store, version=version, path=output_dir, base_model=summary.get("base_model") or cfg.model,
                      run_id=run_id, config=config, data_counts=summary.get("data_counts") or counts,
                      losses=losses, actor=actor)
    store.audit(actor, "train.done", {"version": version, "run_id": run_id, "final_loss": final,
                                      "tokens_per_second": summary.get("tokens_per_second")})
    return record
