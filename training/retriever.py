"""The flywheel teaches the retriever: fine-tune the embedder on distilled questions, gate it, switch to it.

    flywheel train --target retriever [--max-steps N] [--run-id ID]    # a new candidate, retrievers/rNNNN
    flywheel cycle                                                     # ... then gated and, if better, served

    python -m training.retriever gate r0002 [--qa qa.jsonl] [--no-apply] [--force]
    python -m training.retriever promote r0002 [--force]   # re-embed into its own collection, then switch
    python -m training.retriever rollback                    # back to the retriever (or base) served before
    python -m training.retriever list
    python -m training.retriever compare r0002 --against base --qa qa.jsonl --no-heldout   # JSON, nothing applied

    record = train_retriever(settings, store, kb)                        # RetrieverRecord("r0002", candidate)
    decision, reports, vectors = gate_retriever(settings, store, kb, "r0002", qa)
    start_switch(settings, store, "r0002", "cycle", vectors=vectors).wait()   # serving from here on

This file mines the data, trains, and is the command line; the gate is training/retriever_gate.py, the
registry and the serving switch training/retriever_registry.py (their docstrings say how each decides).

Data. Every train-split distilled pair that is not a refusal gives two rows: (question, its chunk as
indexed — `embedding_text`, title and heading included — and a hard negative) and (question, the answer
sentence, citation markers stripped). The hard negative is mined with the serving retrieval itself
(`agent.retrieval.Retriever`, dense + BM25): the best-ranked chunk from another section or document
that does not also support the answer (training.distill.is_supported), so the model learns exactly the
confusions it makes today; a pair without one gets a random chunk of another document. The rows are kept
as `train.jsonl` next to the model. At most `retriever_max_pairs` pairs, spread over documents
(training.dataset.spread). Each version starts from the configured embedder, never from the previous
retriever: versions stay comparable and errors don't compound from one cycle to the next.

Training. sentence-transformers' own `SentenceTransformerTrainer` with MultipleNegativesRankingLoss (every
other row's passage in the batch is a negative too, plus the mined one), `NO_DUPLICATES` batches (a
question or passage twice in one batch would be its own false negative), the chunk rows and the answer
rows as two datasets so short answer batches aren't padded to chunk length. It runs in its own process
(`python -m training.retriever fit --config RUN.json`, started by training.train.run_process): a crash or
an OOM kill takes down the run, not the bot. Checkpoints every quarter of the run; rerunning with the same
run id resumes from the last one. `retrievers/rNNNN/` holds RUN.json, train.jsonl, train.log,
losses.jsonl, flywheel.json and the model in `model/`; the row in `retrievers` has config, data counts
and losses, like an adapter's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.metrics import strip_citations
from agent.prompts import says_not_found
from storage.config import Settings
from storage.db import Store, new_id
from storage.embeddings import model_identity, resolve_embedding_model
from storage.index import embedding_text
from training.registry import RegistryError
from training.retriever_gate import compare_retrievers, gate_retriever
from training.retriever_registry import (
    EMBED_BATCH,
    Progress,
    RetrieverRecord,
    _quiet,
    list_retrievers,
    next_version,
    register,
    start_rollback,
    start_switch,
)
from training.retriever_registry import reject  # noqa: F401  (training.cycle imports it from here)
from training.sft import emit, last_checkpoint, load_config, make_callback, save_config, set_threads
from training.train import STALL_SECONDS, TrainingError, finished_run, read_losses, run_process

NEGATIVE_DEPTH = 10  # hits searched per question for a hard negative


# --- training data -------------------------------------------------------------------------------
def training_pairs(settings: Settings, store: Store) -> list[dict[str, Any]]:
    """Train-split distilled pairs with a live chunk and a real answer (refusal pairs say nothing about
    which passage answers), at most `retriever_max_pairs`, spread over documents and sections."""
    from training.dataset import spread

    rows = store.query(
        """SELECT q.id, q.question, q.answer, q.document_id, q.section, q.created_at, q.chunk_id,
                  c.source, c.heading, c.text, c.document_id AS chunk_document
           FROM qa_pairs q JOIN chunks c ON c.id = q.chunk_id
           WHERE q.split = 'train' ORDER BY q.created_at, q.id""")
    return spread([r for r in rows if not says_not_found(r["answer"])], settings.retriever_max_pairs)


def hard_negative(pair: dict[str, Any], hits: list[Any]) -> Any | None:
    """The best-ranked hit that is neither the pair's section nor a passage that also answers it."""
    from training.distill import is_supported

    answer = strip_citations(pair["answer"])
    for hit in hits:
        same_section = hit.source == pair["source"] and (hit.heading or "") == (pair["heading"] or "")
        if hit.chunk_id == pair["chunk_id"] or same_section:
            continue
        if is_supported(answer, hit.text):  # another passage that says the same: not a negative
            continue
        return hit
    return None


def random_negative(pair: dict[str, Any], chunks: list[dict[str, Any]], rng: random.Random) -> dict[str, Any] | None:
    """A random chunk of another document (tried by sampling), else of another section, else any other."""
    for _ in range(50):
        pick = rng.choice(chunks)
        if pick["document_id"] != pair["chunk_document"]:
            return pick
    others = [c for c in chunks if (c["source"], c["heading"] or "") != (pair["source"], pair["heading"] or "")]
    others = others or [c for c in chunks if c["id"] != pair["chunk_id"]]
    return rng.choice(others) if others else None


def build_rows(settings: Settings, store: Store, kb: Any, *, seed: int = 0,
               on_progress: Progress = _quiet) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The training rows (see the module docstring) and their counts. One hybrid search per pair."""
    from agent.retrieval import Retriever

    pairs = training_pairs(settings, store)
    retriever = Retriever(kb)
    rng = random.Random(seed)
    chunks: list[dict[str, Any]] = []  # loaded on the first pair with nothing to mine
    rows: list[dict[str, Any]] = []
    counts = {"pairs": len(pairs), "chunk_rows": 0, "answer_rows": 0, "mined_negatives": 0, "random_negatives": 0}
    for number, pair in enumerate(pairs, start=1):
        hits = retriever.search(pair["question"], k=NEGATIVE_DEPTH).hits
        negative = hard_negative(pair, hits)
        if negative is not None:
            neg = {"id": negative.chunk_id, "text": embedding_text(negative.source, negative.heading, negative.text),
                   "from": "mined"}
        else:
            chunks = chunks or store.query("SELECT id, document_id, source, heading, text FROM chunks")
            pick = random_negative(pair, chunks, rng)
            neg = {"id": pick["id"], "text": embedding_text(pick["source"], pick["heading"], pick["text"]),
                   "from": "random"} if pick else None
        if neg is not None:
            rows.append({"kind": "chunk", "anchor": pair["question"],
                         "positive": embedding_text(pair["source"], pair["heading"], pair["text"]),
                         "negative": neg["text"], "pair_id": pair["id"], "chunk_id": pair["chunk_id"],
                         "negative_id": neg["id"], "negative_from": neg["from"]})
            counts["chunk_rows"] += 1
            counts[f"{neg['from']}_negatives"] += 1
        answer = strip_citations(pair["answer"]).strip()
        if answer:
            rows.append({"kind": "answer", "anchor": pair["question"], "positive": answer, "pair_id": pair["id"]})
            counts["answer_rows"] += 1
        on_progress("mining hard negatives", number, len(pairs))
    return rows, counts


# --- the training process ------------------------------------------------------------------------
@dataclass
class FitConfig:
    """One retriever training run; serialised as RUN.json in the version's folder (training.sft's
    save_config/load_config, as the adapters' RunConfig)."""

    model: str  # the embedder to start from (id or path)
    train_file: str  # train.jsonl: {"kind": "chunk"|"answer", "anchor", "positive", "negative"?}
    output_dir: str  # retrievers/rNNNN; the model goes to output_dir/model
    learning_rate: float = 3e-5
    epochs: float = 1
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    warmup: float = 0.1  # share of the steps
    threads: int = 0
    save_steps: int = 50
    save_total_limit: int = 1
    keep_checkpoints: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # run id, data counts

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"


def fit(cfg: FitConfig) -> dict[str, Any]:
    """Train (resuming from the last checkpoint if one exists) and save the model; runs in the child
    process. Progress: tqdm on stderr, `FLYWHEEL {...}` event lines on stdout (training.sft's callback)."""
    import torch
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from storage.hub import quiet_libraries

    quiet_libraries()
    threads = set_threads(cfg.threads)
    rows = [json.loads(line) for line in Path(cfg.train_file).read_text().splitlines() if line.strip()]
    columns = {"chunk": ("anchor", "positive", "negative"), "answer": ("anchor", "positive")}
    parts = {}
    for kind, names in columns.items():
        picked = [r for r in rows if r["kind"] == kind]
        if picked:
            parts[f"{kind}s"] = Dataset.from_dict({name: [r[name] for r in picked] for name in names})
    if not parts:
        raise ValueError(f"{cfg.train_file}: no training rows")
    local = Path(cfg.model).exists()
    model = SentenceTransformer(cfg.model, device="cuda" if torch.cuda.is_available() else "cpu",
                                local_files_only=local)
    args = Arguments(
        output_dir=str(cfg.checkpoints_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup,  # a float below 1 is a share of the steps
        # A question or passage twice in a batch would be scored as its own negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=1,
        report_to="none",
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,  # workers would compete with torch for the same cores
        disable_tqdm=False,
    )
    callback = make_callback(Path(cfg.output_dir))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=DatasetDict(parts),
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[callback])
    resume = last_checkpoint(cfg)  # type: ignore[arg-type]  (it only reads cfg.checkpoints_dir)
    counts = {name: len(part) for name, part in parts.items()}
    emit("config", threads=threads, resume_from=resume, train_rows=counts)
    trainer.train(resume_from_checkpoint=resume)
    model.save(str(cfg.model_dir))
    summary = {
        "base_model": cfg.model,
        "data_counts": {**cfg.extra.get("data_counts", {}), **{f"{k}_trained": v for k, v in counts.items()}},
        "config": dataclasses.asdict(cfg),
        "final_loss": callback.last_loss,
        "global_step": trainer.state.global_step,
        "resumed_from": resume,
        **callback.throughput(trainer.state),
    }
    (Path(cfg.output_dir) / "flywheel.json").write_text(json.dumps(summary, indent=2))
    if not cfg.keep_checkpoints:
        shutil.rmtree(cfg.checkpoints_dir, ignore_errors=True)
    emit("done", final_loss=summary["final_loss"], global_step=summary["global_step"], resumed_from=resume)
    return summary


def _run_dir_for(settings: Settings, store: Store, run_id: str) -> tuple[str, Path, bool]:
    """(version, folder, resuming): the folder of an unfinished attempt of `run_id`, else a new version."""
    if settings.retrievers_dir.is_dir():
        for folder in sorted(settings.retrievers_dir.iterdir()):
            run_json = folder / "RUN.json"
            if run_json.is_file() and not store.query("SELECT 1 FROM retrievers WHERE version = ?", (folder.name,)):
                try:
                    extra = json.loads(run_json.read_text()).get("extra", {})
                except ValueError:
                    continue
                if extra.get("run_id") == run_id:
                    return folder.name, folder, True
    version = next_version(settings, store)
    folder = settings.retrievers_dir / version
    folder.mkdir(parents=True, exist_ok=False)  # two runs never share a version
    return version, folder, False


def train_retriever(
    settings: Settings,
    store: Store,
    kb: Any,
    *,
    run_id: str | None = None,
    max_steps: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Progress = _quiet,
    stall_seconds: float = STALL_SECONDS,
    env: dict[str, str] | None = None,
    actor: str = "training",
) -> RetrieverRecord:
    """Mine the rows, train a new embedder in a fresh process and register it as a "candidate" version.

    Raises TrainingError (with the log tail) when there is nothing to train on or the process fails, is
    killed, hangs or diverges; nothing is registered then, and rerunning with the same `run_id` resumes
    from the last checkpoint on the same rows. `on_event` gets the trainer's events ({"event": "step",
    "step", "max_steps", "loss", ...}); `on_progress` the mining progress.
    """
    settings.ensure_dirs()
    run_id = run_id or new_id()
    version, folder, resuming = _run_dir_for(settings, store, run_id)
    train_file = folder / "train.jsonl"
    if resuming and train_file.is_file():  # the checkpoint was trained on these rows: keep them
        counts = json.loads((folder / "RUN.json").read_text())["extra"]["data_counts"]
    else:
        rows, counts = build_rows(settings, store, kb, on_progress=on_progress)
        if not rows:
            shutil.rmtree(folder, ignore_errors=True)
            raise TrainingError("no training pairs for the retriever: distill some documents first "
                                "(refusal pairs don't count)")
        with train_file.open("w", encoding="utf-8") as sink:
            for row in rows:
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    steps = math.ceil(counts["chunk_rows"] / settings.retriever_batch_size) + \
        math.ceil(counts["answer_rows"] / settings.retriever_batch_size)
    steps = max_steps or max(1, math.ceil(steps * settings.retriever_epochs))
    base = resolve_embedding_model(settings.embedding_model)
    cfg = FitConfig(model=base, train_file=str(train_file), output_dir=str(folder),
                    learning_rate=settings.retriever_learning_rate, epochs=settings.retriever_epochs,
                    max_steps=max_steps or -1, batch_size=settings.retriever_batch_size,
                    threads=settings.train_threads, save_steps=max(1, steps // 4),
                    extra={"run_id": run_id, "data_counts": counts})
    run_json = folder / "RUN.json"
    save_config(cfg, run_json)
    store.audit(actor, "retriever.train.start", {"version": version, "run_id": run_id, "counts": counts})
    command = [sys.executable, "-m", "training.retriever", "fit", "--config", str(run_json)]
    started = time.perf_counter()
    returncode, _, tail = run_process(command, folder / "train.log", on_event=on_event,
                                      stall_seconds=stall_seconds, env=env)
    summary = finished_run(store, actor, returncode, tail, folder, label=f"retriever training {version}",
                           failed="retriever.train.failed", version=version, run_id=run_id)
    final = summary.get("final_loss")
    if final is None or not math.isfinite(final):
        store.audit(actor, "retriever.train.failed", {"version": version, "run_id": run_id, "final_loss": final})
        raise TrainingError(f"retriever training {version} diverged (final loss {final}); not registered")
    config = {**summary.get("config", {}), "train_seconds": round(time.perf_counter() - started, 1),
              "global_step": summary.get("global_step"), "resumed_from": summary.get("resumed_from")}
    record = register(settings, store, version=version, path=cfg.model_dir, run_id=run_id, config=config,
                      base_model=model_identity(settings.embedding_model), losses=read_losses(folder),
                      data_counts=summary.get("data_counts") or counts, actor=actor)
    store.audit(actor, "retriever.train.done", {"version": version, "run_id": run_id, "final_loss": final})
    return record


# --- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fit", help="the training process (train_retriever starts it)").add_argument("--config", required=True)
    gate = sub.add_parser("gate", help="candidate vs the serving embedder; promote (switch) or reject")
    gate.add_argument("version")
    gate.add_argument("--qa", action="append", type=Path, help="QA JSONL with source/pages (repeatable)")
    gate.add_argument("--no-apply", action="store_true", help="decide only")
    gate.add_argument("--force", action="store_true", help="decide even with fewer than gate_min_items")
    promote = sub.add_parser("promote", help="re-embed into the version's collection, then serve it")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="even a version the gate rejected")
    sub.add_parser("rollback", help="serve the previous retriever (or the configured embedder) again")
    measure = sub.add_parser("compare", help="two retrievers on the gate's questions or a QA file; JSON, nothing applied")
    measure.add_argument("candidate", help="rNNNN or base")
    measure.add_argument("--against", default="base", help="rNNNN or base (default)")
    measure.add_argument("--qa", action="append", type=Path, help="QA JSONL with source/pages (repeatable)")
    measure.add_argument("--no-heldout", action="store_true", help="only the --qa questions")
    sub.add_parser("list", help="registered retrievers")
    args = parser.parse_args(argv)
    if args.command == "fit":
        fit(load_config(FitConfig, args.config))
        return 0

    from agent.status import retriever_gate_numbers
    from storage.config import get_settings
    from storage.knowledge import KnowledgeBase

    settings = get_settings()
    store = Store(settings.db_path)

    def show(what: str, done: int, total: int) -> None:
        if done == total or done % 1000 < EMBED_BATCH:
            print(f"{what}: {done}/{total}", file=sys.stderr)

    try:
        if args.command == "list":
            for r in list_retrievers(store):
                print(json.dumps({"version": r.version, "status": r.status, "index": r.index_state,
                                  "final_loss": r.final_loss, **retriever_gate_numbers(r.metrics)}, default=str))
        elif args.command == "gate":
            from agent.evaluate import load_qa

            decision, _, vectors = gate_retriever(settings, store, KnowledgeBase(settings, store), args.version,
                                                  load_qa(args.qa) if args.qa else [], apply=not args.no_apply,
                                                  force=args.force, actor="cli", on_progress=show)
            print(("PROMOTE " if decision.promote else "REJECT ") + "; ".join(decision.reasons))
            for note in decision.notes:
                print(note)
            if decision.promote and not args.no_apply:
                start_switch(settings, store, args.version, "cli", vectors=vectors, on_progress=show).wait()
                print(f"{args.version} is serving")
        elif args.command == "compare":
            from agent.evaluate import load_qa

            decision, reports = compare_retrievers(settings, store, KnowledgeBase(settings, store), args.candidate,
                                                   args.against, load_qa(args.qa) if args.qa else [],
                                                   heldout=not args.no_heldout, on_progress=show)
            print(json.dumps({"decision": asdict(decision),
                              **{name: {k: v for k, v in r.items() if k != "items"} for name, r in reports.items()}}))
        elif args.command == "promote":
            start_switch(settings, store, args.version, "cli", force=args.force, on_progress=show).wait()
            print(f"{args.version} is serving")
        elif args.command == "rollback":
            record = start_rollback(settings, store, "cli", on_progress=show).wait()
            print(f"rolled back to {record.version if record else 'the configured embedder (base)'}")
    except RegistryError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
