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

Gate. Candidate vs the serving embedder (the promoted retriever, else the configured model) on held-out
questions: the distilled held-out split (relevant = the pair's chunk and any chunk of its document that
supports the answer) plus admin QA items with `source`/`pages` (relevant = a chunk of that file/page,
agent.metrics' rule). Nothing is indexed to gate: each embedder ranks the corpus in memory (the serving
one's vectors are read back from its collection; only the candidate embeds the corpus, and those vectors
are reused by the switch), fused with the same BM25 ranking by reciprocal rank exactly as serving does
(the optional cross-encoder is left out). Promotion needs at least `gate_min_items` items, a hit@1 gain
of at least `promote_margin` that is significant by the adapter gate's rule (training.gate: paired
bootstrap 95% CI above 0 and exact sign test p < 0.05), hit@5 not lower, the embedder's own (dense-only)
hit@5 not down by more than `guard_tolerance` (BM25 can mask a worse embedder on one question set), and
the share of answerable questions whose best cosine falls below `min_relevance` (the agent would then
refuse) not up by more than `guard_tolerance`. MRR and the other dense-only numbers are reported.

Switch. Promotion builds the candidate's own Chroma collection (`<collection>-rNNNN`, stamped with the
model path) in a background thread from the SQLite chunks, then flips the registry in one transaction;
until then every answer is served by the old embedder and collection (storage.knowledge.KnowledgeBase.dense
re-reads the registry at each search, so a running bot follows without a restart). A build that dies is
resumed by id difference. After a promotion the collections of the new and the previous serving retriever
are kept (rollback is an instant flip after a catch-up of chunks ingested meanwhile) and older ones dropped.
BM25 is untouched throughout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from agent.metrics import hit_at_k, strip_citations
from agent.prompts import says_not_found
from storage.config import Settings
from storage.db import Store, _json, new_id, now
from storage.embeddings import model_identity, resolve_embedding_model
from storage.index import (
    DenseTarget,
    IndexedChunk,
    VectorIndex,
    base_target,
    chroma_client,
    collection_name,
    embedding_text,
)
from storage.knowledge import serving_target
from training.gate import CONFIDENCE, Decision, paired_bootstrap, sign_test
from training.registry import RegistryError
from training.sft import emit, last_checkpoint, make_callback, set_threads
from training.train import STALL_SECONDS, TrainingError, describe_failure, read_losses, run_process

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)
_VERSION = re.compile(r"^r(\d{4,})$")
NEGATIVE_DEPTH = 10  # hits searched per question for a hard negative
EMBED_BATCH = 256  # chunks embedded and written per step of a collection build


def _quiet(what: str, done: int, total: int) -> None:
    return None


# --- the registry ------------------------------------------------------------------------------
@dataclass
class RetrieverRecord:
    version: str
    path: str  # the sentence-transformers model folder
    base_model: str
    collection: str
    status: str  # candidate | promoted | retired | rejected
    index_state: str  # none | building | ready | failed | dropped
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data_counts: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    promoted_at: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RetrieverRecord:
        decoded = {k: json.loads(row[k]) if isinstance(row.get(k), str) else row.get(k)
                   for k in ("config", "data_counts", "losses", "metrics")}
        return cls(version=row["version"], path=row["path"], base_model=row["base_model"],
                   collection=row["collection"], status=row["status"], index_state=row["index_state"],
                   run_id=row.get("run_id"), config=decoded["config"] or {}, data_counts=decoded["data_counts"] or {},
                   losses=decoded["losses"] or [], metrics=decoded["metrics"] or {},
                   created_at=row.get("created_at") or "", promoted_at=row.get("promoted_at"))

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1].get("loss") if self.losses else None

    def target(self) -> DenseTarget:
        return DenseTarget(self.version, self.path, self.collection)


def list_retrievers(store: Store, status: str | None = None) -> list[RetrieverRecord]:
    """Every registered retriever, newest version first."""
    where, params = ("WHERE status = ?", (status,)) if status else ("", ())
    return [RetrieverRecord.from_row(r)
            for r in store.query(f"SELECT * FROM retrievers {where} ORDER BY version DESC", params)]


def get_retriever(store: Store, version: str) -> RetrieverRecord:
    rows = store.query("SELECT * FROM retrievers WHERE version = ?", (version,))
    if not rows:
        raise RegistryError(f"no retriever {version!r}; known: {[r.version for r in list_retrievers(store)] or 'none'}")
    return RetrieverRecord.from_row(rows[0])


def serving_retriever(store: Store) -> RetrieverRecord | None:
    """The promoted retriever (its collection is complete); None when the configured embedder serves."""
    rows = store.query("SELECT * FROM retrievers WHERE status = 'promoted' ORDER BY promoted_at DESC LIMIT 1")
    return RetrieverRecord.from_row(rows[0]) if rows else None


def next_version(settings: Settings, store: Store) -> str:
    """The next free `rNNNN`, above every registered version and every folder on disk."""
    numbers = [int(m.group(1)) for r in list_retrievers(store) if (m := _VERSION.match(r.version))]
    if settings.retrievers_dir.is_dir():
        numbers += [int(m.group(1)) for p in settings.retrievers_dir.iterdir() if (m := _VERSION.match(p.name))]
    return f"r{max(numbers, default=0) + 1:04d}"


def _update(store: Store, version: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    with store.lock:
        store.db.execute(f"UPDATE retrievers SET {sets} WHERE version = ?",
                         (*[_json(v) if isinstance(v, (dict, list)) else v for v in fields.values()], version))


def register(settings: Settings, store: Store, *, version: str, path: str | Path, base_model: str,
             run_id: str | None = None, config: dict[str, Any] | None = None,
             data_counts: dict[str, Any] | None = None, losses: list[dict[str, Any]] | None = None,
             actor: str = "training") -> RetrieverRecord:
    """Add a sentence-transformers model folder as a "candidate" retriever (it serves nothing until the
    gate, or an admin, promotes it). Its collection is named after the version; nothing is built yet."""
    if not _VERSION.match(version):
        raise RegistryError(f"retriever versions look like r0001, not {version!r}")
    if store.query("SELECT 1 FROM retrievers WHERE version = ?", (version,)):
        raise RegistryError(f"retriever {version} is already registered")
    if not (Path(path) / "modules.json").is_file():
        raise RegistryError(f"{path} holds no sentence-transformers model (modules.json missing)")
    row = {"version": version, "path": model_identity(str(path)), "base_model": base_model,
           "collection": collection_name(settings, version), "status": "candidate", "index_state": "none",
           "run_id": run_id, "config": _json(config or {}), "data_counts": _json(data_counts or {}),
           "losses": _json(losses or []), "metrics": _json({}), "created_at": now(), "promoted_at": None}
    with store.lock:
        store.db["retrievers"].insert(row)
    store.audit(actor, "retriever.register", {"version": version, "path": row["path"], "run_id": run_id})
    return get_retriever(store, version)


def reject(store: Store, version: str, actor: str, reason: str = "") -> RetrieverRecord:
    """Mark a candidate as not fit to serve (the gate's verdict, or an admin's)."""
    record = get_retriever(store, version)
    if record.status == "promoted":
        raise RegistryError(f"{version} is serving; roll back or promote another retriever first")
    _update(store, version, status="rejected")
    store.audit(actor, "retriever.reject", {"version": version, "reason": reason})
    return get_retriever(store, version)


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
    """One retriever training run; serialised as RUN.json in the version's folder."""

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

    @classmethod
    def load(cls, path: str | Path) -> FitConfig:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:  # a typo in RUN.json must not silently train with a default
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))

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
    cfg.save(run_json)
    store.audit(actor, "retriever.train.start", {"version": version, "run_id": run_id, "counts": counts})
    command = [sys.executable, "-m", "training.retriever", "fit", "--config", str(run_json)]
    started = time.perf_counter()
    returncode, _, tail = run_process(command, folder / "train.log", on_event=on_event,
                                      stall_seconds=stall_seconds, env=env)
    summary_path = folder / "flywheel.json"
    if returncode != 0 or not summary_path.is_file():
        reason = describe_failure(returncode) if returncode != 0 else "finished without writing flywheel.json"
        store.audit(actor, "retriever.train.failed", {"version": version, "run_id": run_id, "returncode": returncode})
        raise TrainingError(f"retriever training {version} {reason}. Checkpoints and train.log are kept in "
                            f"{folder}; rerun with run_id={run_id!r} to resume.\n--- last lines of the log ---\n"
                            + "\n".join(tail))
    summary = json.loads(summary_path.read_text())
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


# --- the gate ------------------------------------------------------------------------------------
def gate_items(store: Store, qa: list[dict[str, Any]] | None = None, *, heldout: bool = True) -> list[dict[str, Any]]:
    """The questions the retriever gate ranks, each with the set of chunk ids that answer it:
    distilled held-out pairs (their chunk + chunks of the same document that support the answer), then
    admin QA items that name a `source` and/or `pages` (any chunk there). Held-out refusal pairs come as
    `unanswerable` items: no relevance, only the min_relevance report. Questions asked twice count once."""
    from storage.text import terms
    from training.distill import is_supported

    chunks = store.query("SELECT id, document_id, source, page, heading, text FROM chunks")
    by_id = {c["id"]: c for c in chunks}
    by_document: dict[str, list[tuple[dict[str, Any], set[str]]]] = {}
    for chunk in chunks:
        by_document.setdefault(chunk["document_id"], []).append((chunk, terms(chunk["text"])))

    def supporting(answer: str, document_id: str) -> set[str]:
        # is_supported re-analyses the passage per call; a cheap term-overlap screen first keeps a
        # one-document manual (every chunk "the same document") to a few calls per question.
        wanted = terms(answer)
        return {c["id"] for c, have in by_document[document_id]
                if len(wanted & have) >= 0.5 * len(wanted) and is_supported(answer, c["text"])}
    items: list[dict[str, Any]] = []
    pairs = store.query("SELECT id, chunk_id, question, answer FROM qa_pairs WHERE split = 'heldout' ORDER BY id")
    for pair in pairs if heldout else []:
        chunk = by_id.get(pair["chunk_id"])
        if chunk is None:
            continue
        if says_not_found(pair["answer"]):
            items.append({"id": pair["id"], "origin": "heldout", "question": pair["question"], "unanswerable": True,
                          "relevant": set()})
            continue
        answer = strip_citations(pair["answer"])
        relevant = {chunk["id"]} | supporting(answer, chunk["document_id"])
        items.append({"id": pair["id"], "origin": "heldout", "question": pair["question"], "relevant": relevant})
    for number, item in enumerate(qa or [], start=1):
        if item.get("unanswerable") or not (item.get("source") or item.get("pages")):
            continue
        relevant = {c["id"] for c in chunks
                    if hit_at_k([{"source": c["source"], "page": c["page"]}], item.get("source"), item.get("pages"), 1)}
        if relevant:  # a file that isn't ingested can't be found by either embedder
            items.append({"id": str(item.get("id") or f"qa{number:03d}"), "origin": item.get("origin", "qa"),
                          "question": item["question"], "relevant": relevant})
    seen: set[str] = set()
    unique = []
    for item in items:
        key = " ".join(item["question"].casefold().split())
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def corpus(store: Store) -> tuple[list[str], list[str]]:
    """(chunk ids, texts as embedded) of every chunk, in a fixed order."""
    rows = store.query("SELECT id, source, heading, text FROM chunks ORDER BY document_id, ord")
    return [r["id"] for r in rows], [embedding_text(r["source"], r["heading"], r["text"]) for r in rows]


def embed(embedder: Any, texts: list[str], what: str, on_progress: Progress = _quiet,
          batch: int = EMBED_BATCH) -> np.ndarray:
    """(len(texts), dim) normalized float32 vectors, in batches so progress can be shown."""
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(embedder.encode(texts[start : start + batch]))
        on_progress(what, min(start + batch, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)


def corpus_vectors(settings: Settings, store: Store, target: DenseTarget, ids: list[str], texts: list[str],
                   on_progress: Progress = _quiet) -> np.ndarray:
    """(len(ids), dim) vectors of the corpus as `target` would search it: read back from its collection
    when it has one (the serving side of a gate costs no corpus pass), embedding only what it lacks;
    embedded in memory otherwise — nothing is indexed to gate. `texts` are the chunks as embedded."""
    from storage.embeddings import get_embedder

    embedder = get_embedder(target.model)
    found: dict[str, np.ndarray] = {}
    names = {c if isinstance(c, str) else c.name for c in chroma_client(settings).list_collections()}
    if target.collection in names:
        index = VectorIndex(settings, target.collection, target.model, target.version)
        index.check_model(embedder.identity)
        found = index.vectors(ids)
    missing = [n for n, i in enumerate(ids) if i not in found]
    if missing:
        vectors = embed(embedder, [texts[n] for n in missing], f"embedding the corpus with {target.label}", on_progress)
        found.update(zip([ids[n] for n in missing], vectors))
    return np.stack([found[i] for i in ids]) if ids else np.zeros((0, embedder.dimension), dtype=np.float32)


def rank_pair(settings: Settings, store: Store, kb: Any, candidate: DenseTarget, reference: DenseTarget,
              items: list[dict[str, Any]], on_progress: Progress = _quiet
              ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Both embedders' reports on `items` ({"candidate", "serving"}: see rank_items), each fused with the
    same BM25 ranking, and the candidate's corpus vectors by chunk id (a switch to it reuses them)."""
    from storage.embeddings import get_embedder

    chunk_ids, texts = corpus(store)
    questions = [i["question"] for i in items]
    lexical = [[cid for cid, _ in kb.lexical.query(q, settings.candidates)] for q in questions]
    reports: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    for name, target in (("candidate", candidate), ("serving", reference)):
        chunk_vectors = corpus_vectors(settings, store, target, chunk_ids, texts, on_progress)
        question_vectors = get_embedder(target.model).encode(questions)
        reports[name] = rank_items(settings, items, question_vectors, chunk_ids, chunk_vectors, lexical, target.label)
        if name == "candidate":
            vectors = dict(zip(chunk_ids, chunk_vectors))
    return reports, vectors


def rank_items(settings: Settings, items: list[dict[str, Any]], question_vectors: np.ndarray,
               chunk_ids: list[str], chunk_vectors: np.ndarray, lexical: list[list[str]],
               label: str) -> dict[str, Any]:
    """One embedder's report: per item the served ranking (dense top `candidates` fused with BM25 by
    reciprocal rank, as agent.retrieval does) and the dense-only ranking, scored by hit@1, hit@5 and
    reciprocal rank against the item's relevant chunks; plus the best cosine (min_relevance guard)."""
    from agent.retrieval import reciprocal_rank_fusion

    scores = question_vectors @ chunk_vectors.T  # (questions, chunks) cosine: both sides are normalized
    rows = []
    for number, item in enumerate(items):
        row_scores = scores[number]
        best = float(row_scores.max()) if row_scores.size else 0.0
        order = np.argsort(-row_scores, kind="stable")
        dense = [chunk_ids[j] for j in order[: settings.candidates]]
        fused = [cid for cid, _ in reciprocal_rank_fusion([dense, lexical[number]], k=settings.rrf_k)]
        row = {"id": item["id"], "origin": item["origin"], "answerable": not item.get("unanswerable"),
               "best_dense": round(best, 4)}
        if row["answerable"]:
            relevant = item["relevant"]
            served = next((rank for rank, cid in enumerate(fused, start=1) if cid in relevant), None)
            dense_rank = next((rank for rank, j in enumerate(order, start=1) if chunk_ids[j] in relevant), None)
            row.update({"rank": served, "hit@1": int(served == 1), "hit@5": int(served is not None and served <= 5),
                        "rr": round(1 / served, 4) if served else 0.0, "dense_rank": dense_rank,
                        "dense_hit@1": int(dense_rank == 1), "dense_hit@5": int(dense_rank is not None and dense_rank <= 5),
                        "dense_rr": round(1 / dense_rank, 4) if dense_rank else 0.0,
                        "below_min_relevance": int(best < settings.min_relevance)})
        rows.append(row)
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]

    def share(key: str, among: list[dict[str, Any]]) -> float:
        return round(mean(r[key] for r in among), 4) if among else 0.0

    report: dict[str, Any] = {
        "label": label, "n": len(answerable), "unanswerable": len(unanswerable),
        "hit@1": share("hit@1", answerable), "hit@5": share("hit@5", answerable), "mrr": share("rr", answerable),
        "dense_hit@1": share("dense_hit@1", answerable), "dense_hit@5": share("dense_hit@5", answerable),
        "dense_mrr": share("dense_rr", answerable), "below_min_relevance": share("below_min_relevance", answerable),
        "items": rows,
    }
    if unanswerable:  # near-topic questions the docs don't answer: the model would still run on these
        report["unanswerable_above_min_relevance"] = round(
            mean(int(r["best_dense"] >= settings.min_relevance) for r in unanswerable), 4)
    origins = sorted({r["origin"] for r in answerable})
    if len(origins) > 1:
        report["hit@1_by_origin"] = {o: share("hit@1", [r for r in answerable if r["origin"] == o]) for o in origins}
    return report


def compare(candidate: dict[str, Any], reference: dict[str, Any], margin: float, tolerance: float, *,
            min_items: int = 0, force: bool = False) -> Decision:
    """Promote only if (1) at least `min_items` answerable items were ranked (or `force`), (2) the per-item
    hit@1 gain over the reference is at least `margin` and significant by training.gate's rule (paired
    bootstrap 95% CI above 0 and exact sign test p < 0.05), (3) hit@5 is not lower (and the embedder's own,
    dense-only hit@5 drops by at most `tolerance`), and (4) the share of questions below min_relevance
    rises by at most `tolerance`. MRR and the other dense-only numbers go into notes."""
    ref_label = reference["label"]
    pairs = [(c["hit@1"], r["hit@1"]) for c, r in zip(candidate["items"], reference["items"]) if c["answerable"]]
    if [c["id"] for c in candidate["items"]] != [r["id"] for r in reference["items"]]:
        raise ValueError("the candidate and the reference were ranked on different questions; can't pair them")
    diffs = [c - r for c, r in pairs]
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    delta = round(float(np.mean(diffs)), 4) if diffs else 0.0
    ci_low, ci_high = paired_bootstrap(diffs)
    p_value = sign_test(better, worse)
    notes = [f"MRR {candidate['mrr']:.3f} vs {reference['mrr']:.3f}; dense only: hit@1 {candidate['dense_hit@1']:.3f} "
             f"vs {reference['dense_hit@1']:.3f}, hit@5 {candidate['dense_hit@5']:.3f} vs {reference['dense_hit@5']:.3f}, "
             f"MRR {candidate['dense_mrr']:.3f} vs {reference['dense_mrr']:.3f}"]
    decision = Decision(False, [], ref_label, delta, notes, ci_low, ci_high, p_value, better, worse, len(pairs),
                        candidate["n"] + candidate["unanswerable"])
    ok = True
    if candidate["n"] < min_items:
        if force:
            decision.forced = True
            decision.reasons.append(f"only {candidate['n']} held-out questions; need {min_items} (forced: deciding anyway)")
        else:
            ok = False
            decision.reasons.append(f"only {candidate['n']} held-out questions; need {min_items} "
                                    "(add a --qa file with sources/pages, or force the decision)")
    significant = ci_low > 0 and p_value < 1 - CONFIDENCE
    verdict = ("" if significant and delta >= margin else
               ": not a significant gain at 95%" if not significant else f": gain below the minimum {margin:.3f}")
    ok = ok and not verdict
    decision.reasons.append(
        f"hit@1 {candidate['hit@1']:.3f} vs {ref_label} {reference['hit@1']:.3f} on {len(pairs)} questions: "
        f"Δ {delta:+.3f}, 95% CI [{ci_low:+.3f}, {ci_high:+.3f}], sign test p = {p_value:.3g} "
        f"({better} better, {worse} worse){verdict}")
    if candidate["hit@5"] < reference["hit@5"]:
        ok = False
        decision.reasons.append(f"hit@5 got lower: {reference['hit@5']:.3f} → {candidate['hit@5']:.3f}")
    if reference["dense_hit@5"] - candidate["dense_hit@5"] > tolerance:
        # BM25 can hide a worse embedder on this question set; not on questions whose words the passage lacks.
        ok = False
        decision.reasons.append(f"dense-only hit@5 got worse: {reference['dense_hit@5']:.3f} → "
                                f"{candidate['dense_hit@5']:.3f} (more than {tolerance:.3f})")
    rise = candidate["below_min_relevance"] - reference["below_min_relevance"]
    if rise > tolerance:
        ok = False
        decision.reasons.append(f"guard below_min_relevance got worse: {reference['below_min_relevance']:.3f} → "
                                f"{candidate['below_min_relevance']:.3f} (answerable questions the agent would refuse)")
    decision.promote = ok
    return decision


def gate_retriever(
    settings: Settings,
    store: Store,
    kb: Any,
    version: str,
    qa: list[dict[str, Any]] | None = None,
    *,
    apply: bool = True,
    force: bool = False,
    actor: str = "gate",
    on_progress: Progress = _quiet,
) -> tuple[Decision, dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Rank the gate's questions with the candidate and with the serving embedder; decide and record the
    reports in the candidate's metrics. `apply` rejects a failing candidate; a passing one stays a
    candidate with decision.promote in its metrics until `start_switch` has built its collection.
    Returns (decision, {"candidate", "serving"} reports, the candidate's corpus vectors by chunk id, for
    the switch to reuse)."""
    record = get_retriever(store, version)
    items = gate_items(store, qa)
    if not [i for i in items if not i.get("unanswerable")]:
        raise ValueError("the retriever gate needs held-out questions (distill some documents) or QA items "
                         "with sources/pages")
    started = time.perf_counter()
    reports, vectors = rank_pair(settings, store, kb, record.target(), serving_target(settings, store), items,
                                 on_progress)
    decision = compare(reports["candidate"], reports["serving"], settings.promote_margin, settings.guard_tolerance,
                       min_items=settings.gate_min_items, force=force)
    seconds = round(time.perf_counter() - started, 1)
    summary = {k: v for k, v in reports["candidate"].items()}
    summary.update(seconds=seconds, compared={"serving": reports["serving"]}, decision=asdict(decision))
    _update(store, version, metrics=summary)
    store.audit(actor, "retriever.gate", {"version": version, **asdict(decision)})
    if apply and not decision.promote:
        reject(store, version, actor, reason="; ".join(decision.reasons))
    return decision, reports, vectors


def compare_retrievers(settings: Settings, store: Store, kb: Any, candidate: str, reference: str = "base",
                       qa: list[dict[str, Any]] | None = None, *, heldout: bool = True,
                       on_progress: Progress = _quiet) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """Any two retrievers ("base" = the configured embedder) ranked on the gate's questions, or only on
    `qa` with heldout=False (e.g. human-written questions): the gate's report and verdict, nothing
    recorded or applied. How the README's before/after retrieval numbers are measured."""
    def target(name: str) -> DenseTarget:
        return base_target(settings) if name == "base" else get_retriever(store, name).target()

    items = gate_items(store, qa, heldout=heldout)
    if not [i for i in items if not i.get("unanswerable")]:
        raise ValueError("no questions with a known passage to rank")
    reports, _ = rank_pair(settings, store, kb, target(candidate), target(reference), items, on_progress)
    decision = compare(reports["candidate"], reports["serving"], settings.promote_margin, settings.guard_tolerance,
                       min_items=settings.gate_min_items)
    return decision, reports


# --- the serving switch --------------------------------------------------------------------------
def sync_collection(settings: Settings, store: Store, target: DenseTarget,
                    vectors: dict[str, np.ndarray] | None = None, on_progress: Progress = _quiet) -> dict[str, int]:
    """Make `target`'s collection hold exactly the SQLite chunks, embedded by `target`'s model: embed what
    it lacks (from `vectors` where given), delete what SQLite no longer has. Creates the collection if
    needed; resumes a half-built one. Repeats while ingestion adds chunks meanwhile (at most 3 passes)."""
    from storage.embeddings import get_embedder

    embedder = get_embedder(target.model)
    index = VectorIndex(settings, target.collection, target.model, target.version)
    index.check_model(embedder.identity)
    vectors = vectors or {}
    counts = {"embedded": 0, "reused": 0, "deleted": 0}
    for _ in range(3):
        rows = store.query("SELECT id, document_id, source, page, heading, text FROM chunks ORDER BY document_id, ord")
        have = index.ids()
        stale = list(have - {r["id"] for r in rows})
        if stale:
            index.collection.delete(ids=stale)
            counts["deleted"] += len(stale)
        missing = [r for r in rows if r["id"] not in have]
        if not missing:
            break
        for start in range(0, len(missing), EMBED_BATCH):
            part = missing[start : start + EMBED_BATCH]
            chunks = [IndexedChunk(r["id"], r["document_id"], r["source"], r["page"], r["heading"], r["text"])
                      for r in part]
            todo = [c for c in chunks if c.id not in vectors]
            fresh = dict(zip([c.id for c in todo], embedder.encode(
                [embedding_text(c.source, c.heading, c.text) for c in todo]))) if todo else {}
            counts["embedded"] += len(todo)
            counts["reused"] += len(chunks) - len(todo)
            index.upsert(chunks, np.stack([fresh.get(c.id, vectors.get(c.id)) for c in chunks]),
                         model=embedder.identity)
            on_progress(f"re-embedding into {target.collection}", min(start + EMBED_BATCH, len(missing)), len(missing))
    return counts


def drop_old_collections(settings: Settings, store: Store, keep: set[str]) -> list[str]:
    """Delete our collections (the base one and `<collection>-rNNNN`) other than `keep`."""
    client = chroma_client(settings)
    ours = re.compile(rf"^{re.escape(settings.collection)}(-r\d{{4,}})?$")
    dropped = []
    for collection in client.list_collections():
        name = collection if isinstance(collection, str) else collection.name
        if ours.match(name) and name not in keep:
            client.delete_collection(name)
            dropped.append(name)
    if dropped:
        marks = ",".join("?" * len(dropped))
        with store.lock:
            store.db.execute(f"UPDATE retrievers SET index_state = 'dropped' WHERE collection IN ({marks})", tuple(dropped))
    return dropped


def _switch_lock(settings: Settings):
    from filelock import FileLock

    settings.ensure_dirs()
    return FileLock(str(settings.home / "retriever-switch.lock"))


def switch(settings: Settings, store: Store, version: str | None, actor: str, *, mode: str = "promote",
           vectors: dict[str, np.ndarray] | None = None, force: bool = False,
           on_progress: Progress = _quiet) -> RetrieverRecord | None:
    """Serve `version` (None = the configured embedder): complete its collection off the serving path, then
    flip the registry in one transaction. mode "promote": the old serving retriever is retired, and after
    the flip collections other than the new and the previous one are dropped. mode "rollback": the old one
    is marked rejected (a later rollback won't bring it back) and nothing is dropped. Returns the record
    now serving (None = base). Raises RegistryError when another switch runs or the version can't serve."""
    from filelock import Timeout

    lock = _switch_lock(settings)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RegistryError("another retriever switch is running; try again when it has finished") from None
    try:
        record = get_retriever(store, version) if version else None
        if record is not None and record.status == "rejected" and not force and mode == "promote":
            raise RegistryError(f"{version} was rejected by the retriever gate; promote it with force=True to override")
        if record is not None and not (Path(record.path) / "modules.json").is_file():
            raise RegistryError(f"{version}: model folder {record.path} is missing or incomplete")
        previous = serving_target(settings, store)
        target = record.target() if record else base_target(settings)
        if target == previous:
            return record
        if record is not None:
            _update(store, record.version, index_state="building")
        store.audit(actor, f"retriever.{mode}.start", {"version": target.label, "previous": previous.label})
        try:
            counts = sync_collection(settings, store, target, vectors, on_progress)
        except BaseException:
            if record is not None:
                _update(store, record.version, index_state="failed")
            raise
        with store.transaction() as conn:
            if mode == "rollback" and previous.version:
                conn.execute("UPDATE retrievers SET status = 'rejected' WHERE status = 'promoted'")
            else:
                conn.execute("UPDATE retrievers SET status = 'retired' WHERE status = 'promoted'")
            if record is not None:
                conn.execute("UPDATE retrievers SET status = 'promoted', promoted_at = ?, index_state = 'ready' "
                             "WHERE version = ?", (now(), record.version))
        # Chunks ingested by a process still on the old pair between the last pass and the flip.
        counts_after = sync_collection(settings, store, target, None, on_progress)
        dropped = drop_old_collections(settings, store, {target.collection, previous.collection}) \
            if mode == "promote" else []
        store.audit(actor, f"retriever.{mode}", {"version": target.label, "previous": previous.label, **counts,
                                                 "caught_up": counts_after["embedded"], "dropped": dropped})
        return get_retriever(store, record.version) if record else None
    finally:
        lock.release()


class SwitchJob:
    """A switch running in a background thread: answers keep using the old embedder and collection until
    it flips the registry. `wait()` returns what serves afterwards, or raises what the switch raised."""

    def __init__(self, run: Callable[[], RetrieverRecord | None]):
        self.result: RetrieverRecord | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(run,), name="retriever-switch", daemon=True)
        self.thread.start()

    def _run(self, run: Callable[[], RetrieverRecord | None]) -> None:
        try:
            self.result = run()
        except BaseException as exc:  # handed to whoever waits
            log.exception("retriever switch failed")
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> RetrieverRecord | None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the retriever switch is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def start_switch(settings: Settings, store: Store, version: str, actor: str, *,
                 vectors: dict[str, np.ndarray] | None = None, force: bool = False,
                 on_progress: Progress = _quiet) -> SwitchJob:
    """Promote `version` in the background (see `switch`)."""
    return SwitchJob(lambda: switch(settings, store, version, actor, vectors=vectors, force=force,
                                    on_progress=on_progress))


def start_rollback(settings: Settings, store: Store, actor: str, on_progress: Progress = _quiet) -> SwitchJob:
    """Serve again what served before the current retriever: the latest earlier retriever that was promoted
    and not rolled back, else the configured embedder. Its collection was kept, so this is a catch-up of
    chunks ingested since plus the flip (a full rebuild only if it was dropped)."""
    now_serving = serving_retriever(store)
    if now_serving is None:
        raise RegistryError("nothing to roll back: the configured embedder is serving")
    earlier = [r for r in list_retrievers(store, "retired") if r.promoted_at and r.version != now_serving.version]
    target = max(earlier, key=lambda r: r.promoted_at or "").version if earlier else None
    return SwitchJob(lambda: switch(settings, store, target, actor, mode="rollback", on_progress=on_progress))


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
        fit(FitConfig.load(args.config))
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
