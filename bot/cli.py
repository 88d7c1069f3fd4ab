"""The `flywheel` command line: every capability is a typed function in agent/, storage/ or training/,
and each command here only maps arguments onto it and renders the result.

    flywheel demo                                   # ingest the sample handbook, ask sample questions
    flywheel ingest docs/ handbook.pdf [--prune]    # add or refresh documents
    flywheel ask "How do I roll back?" [--json]     # one cited answer
    flywheel chat                                   # terminal chat with thread memory and 👍/👎
    flywheel sources | status [--json] | config
    flywheel eval --qa qa.jsonl --docs docs/ --out results.jsonl [--json]
    flywheel bot [--http] [--port 3000]             # the Slack bot (Socket Mode by default)
    flywheel distill [--teacher auto] [--max-pairs N] [--json]   # Q&A pairs from new document sections
    flywheel dataset [--json]                       # SFT/DPO/KTO JSONL from pairs and feedback
    flywheel train --dataset DIR [--method sft|dpo] [--max-steps N] [--run-id ID]   # new candidate adapter
    flywheel train --target retriever [--max-steps N] [--run-id ID]   # new candidate embedder (rNNNN)
    flywheel adapters | promote VERSION [--force] | rollback | gate VERSION [--qa qa.jsonl] [--force]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Flywheel: a team assistant that learns.")
console = Console()
err = Console(stderr=True)


def _settings():
    from storage.config import get_settings

    return get_settings()


def _agent():
    from agent.graph import Agent

    return Agent(_settings())


def _own_chroma(settings, command: str) -> None:
    """Take ownership of the embedded Chroma store before any work, or exit 2 saying who owns it and what to do
    instead (stop the bot, or run a Chroma server and set FLYWHEEL_CHROMA_HOST): a second process writing the
    embedded store could corrupt it. With FLYWHEEL_CHROMA_HOST this does nothing."""
    from storage.index import ChromaBusyError, claim_chroma

    try:
        claim_chroma(settings)
    except ChromaBusyError as exc:
        err.print(f"[red]Cannot run `flywheel {command}`:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "chromadb", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from storage.hub import passive_openmp

    passive_openmp()  # before any command imports torch: serving shares the cores (storage/hub.py)


# --- knowledge base -----------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    prune: Annotated[bool, typer.Option(help="Drop documents whose files disappeared.")] = False,
    reindex: Annotated[bool, typer.Option(help="Rebuild the vector and BM25 indexes from SQLite first.")] = False,
) -> None:
    """Parse, chunk, embed and index documents (PDF, Word, PowerPoint, Excel, CSV/TSV, Markdown, HTML, text).
    Exit 1 if any file failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from storage.knowledge import KnowledgeBase

    settings = _settings()
    _own_chroma(settings, "ingest")
    kb = KnowledgeBase(settings)
    if reindex:
        console.print(f"Reindexed {kb.reindex()} chunks.")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("Ingesting", total=None)

        def on_file(result, number: int, total: int) -> None:
            progress.update(task, total=total, completed=number, description=f"Ingesting {Path(result.path).name}")

        report = kb.ingest(paths, prune=prune, on_file=on_file)
    _print_ingest_report(report)
    if report.failed:
        raise typer.Exit(1)


def _print_ingest_report(report) -> None:
    for result in report.files:
        if result.status == "failed":
            err.print(f"[red]✗ {escape(result.path)}[/]: {escape(result.error or '')}")
        elif result.status == "skipped":
            err.print(f"[yellow]- {escape(result.path)}[/]: skipped, {escape(result.error or '')}")
        for warning in result.warnings:
            err.print(f"[yellow]! {escape(result.path)}[/]: {escape(warning)}")
    summary = ", ".join(
        f"{report.count(s)} {s}" for s in ("added", "updated", "unchanged", "pruned", "skipped", "failed") if report.count(s)
    )
    pages = f" from {report.pages} pages" if report.pages else ""  # only paged formats (PDF, slides) have pages
    console.print(f"{summary or 'nothing to do'} — {report.chunks} chunks{pages} in {report.seconds:.1f} s")


@app.command()
def sources() -> None:
    """List the ingested documents."""
    from storage.knowledge import KnowledgeBase

    table = Table("document", "kind", "encoding", "pages", "chunks", "status", "ingested")
    for doc in KnowledgeBase(_settings()).documents():
        status = escape(doc["status"] if not doc["error"] else f"{doc['status']}: {doc['error']}")
        # Per-file warnings (scanned pages, garbled text, a charset the page declared wrongly), one a line.
        for warning in json.loads(doc["warnings"] or "[]"):
            status += f"\n[yellow]! {escape(warning)}[/]"
        # escape(): file names like "Budget [draft].md" are not Rich markup
        table.add_row(escape(doc["name"]), doc["kind"] or "", escape(doc["encoding"] or ""),
                      str(doc["pages"] or ""), str(doc["chunks"]), status, (doc["ingested_at"] or "")[:19])
    console.print(table)


# --- answering ----------------------------------------------------------------------------------
@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    source: Annotated[Optional[list[str]], typer.Option(help="Only search these file names.")] = None,
    thread: Annotated[Optional[str], typer.Option(help="Conversation id, for follow-ups.")] = None,
) -> None:
    """Answer one question from the documents, with numbered citations."""
    agent = _agent()
    if as_json or not console.is_terminal:
        result = agent.answer(question, thread_id=thread, sources=source)
    else:
        # The model's words stream while it writes, but the check may drop them for a quote or a refusal:
        # shown dim under a "draft" label and erased (transient) before the checked answer is printed.
        from rich.live import Live
        from rich.text import Text

        draft = Text("draft, not yet checked against the documents: ", style="dim italic")
        with Live(draft, console=console, transient=True, refresh_per_second=8) as live:
            def stream(token: str) -> None:
                draft.append(token, style="dim")
                live.update(draft)

            result = agent.answer(question, thread_id=thread, sources=source, on_token=stream)
    if as_json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
        return
    _print_answer(result)


def _print_answer(result) -> None:
    console.print(result.answer, markup=False, highlight=False)
    for c in result.citations:
        where = c["source"] + (f", p. {c['page']}" if c["page"] else "") + (f" — {c['heading']}" if c["heading"] else "")
        console.print(f"  [cyan][{c['n']}][/] {escape(where)}")
    adapter = result.adapter or "base"
    console.print(f"[dim]{result.timings_ms.get('total_ms', 0):.0f} ms · {result.model or 'no model'} · adapter {adapter}[/]")


@app.command()
def chat(thread: Annotated[Optional[str], typer.Option(help="Resume a conversation id.")] = None) -> None:
    """Chat in the terminal with thread memory. After an answer, type + or - to vote, /new for a new thread."""
    agent = _agent()
    thread_id = thread or f"cli:{uuid.uuid4().hex[:12]}"
    user = os.environ.get("USER", "cli")
    last = None
    console.print("[dim]Ask a question. '+'/'-' votes on the last answer, /new starts over, Ctrl-D quits.[/]")
    while True:
        try:
            line = console.input("[bold]you›[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line in ("+", "-", "👍", "👎") and last is not None:
            agent.store.set_vote(last.interaction_id, user, +1 if line in ("+", "👍") else -1, source="cli")
            console.print("[dim]thanks — feedback recorded[/]")
            continue
        if line == "/new":
            thread_id = f"cli:{uuid.uuid4().hex[:12]}"
            console.print("[dim]new thread[/]")
            continue
        console.print("[bold]flywheel›[/] ", end="")
        last = agent.answer(line, thread_id=thread_id, on_token=lambda t: console.print(t, end="", markup=False))
        console.print()
        console.rule(style="dim")
        _print_answer(last)


# --- status and settings -------------------------------------------------------------------------
@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Documents, chunks, interactions, feedback, the serving adapter and the serving retriever with its
    gate numbers (hit@1, hit@5, MRR against what served before it)."""
    from agent.status import collect_status

    info = collect_status(_settings())
    if as_json:
        print(json.dumps(info, ensure_ascii=False, default=str))
        return
    table = Table(show_header=False)
    for key, value in info.items():
        table.add_row(key, escape(json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)))
    console.print(table)


@app.command("config")
def show_config() -> None:
    """Print the effective settings, secrets masked."""
    from storage.config import config_file_path

    table = Table("setting", "value")
    for key, value in _settings().masked().items():
        table.add_row(key, escape(str(value)))
    console.print(table)
    console.print(f"[dim]config file: {escape(str(config_file_path() or 'none'))} · environment: FLYWHEEL_<SETTING>[/]")


# --- Slack --------------------------------------------------------------------------------------
@app.command()
def bot(
    http: Annotated[bool, typer.Option("--http", help="Serve HTTP events at /slack/events instead of Socket Mode.")] = False,
    port: Annotated[int, typer.Option(help="HTTP port (with --http).")] = 3000,
) -> None:
    """Run the Slack bot (Socket Mode by default; needs SLACK_BOT_TOKEN and SLACK_APP_TOKEN,
    or SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET with --http)."""
    from bot.app import ConfigError, build_app, check_tokens

    settings = _settings()
    try:
        check_tokens(settings, http=http)  # before loading models: fail in a second, not a minute
        _own_chroma(settings, "bot")  # the bot owns the embedded store for as long as it runs
        flywheel_bot = build_app(settings, http=http)
    except ConfigError as exc:
        err.print(f"[red]Cannot start the Slack bot:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    from bot.flywheel import start_schedule

    next_run = start_schedule(flywheel_bot)
    err.print(f"Flywheel bot starting ({'HTTP on port %d' % port if http else 'Socket Mode'}) — Ctrl-C stops it."
              + (f" Next flywheel cycle: {next_run}." if next_run else ""))
    try:
        if http:
            flywheel_bot.run_http(port)
        else:
            flywheel_bot.run_socket_mode()
    except KeyboardInterrupt:
        pass
    finally:
        flywheel_bot.close()


# --- training data ------------------------------------------------------------------------------
@app.command()
def distill(
    teacher: Annotated[Optional[str], typer.Option(help="offline | anthropic | auto (default: settings.teacher).")] = None,
    max_pairs: Annotated[Optional[int], typer.Option("--max-pairs", help="Cap on new pairs this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Distill Q&A pairs from new or changed document sections into the training pool."""
    from storage.db import Store
    from training.distill import distill as run_distill
    from training.teachers import load_teacher

    settings = _settings()
    settings.ensure_dirs()
    try:
        chosen = load_teacher(settings, teacher)
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    store = Store(settings.db_path)
    try:
        report = run_distill(settings, store, chosen, max_pairs=max_pairs)
    finally:
        store.close()
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    table = Table(title=f"Distilled with {report.teacher}")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in report.as_dict().items():
        if key not in ("usage", "teacher"):
            table.add_row(key.replace("_", " "), str(value))
    usage = report.usage
    table.add_row("teacher tokens (in/out/cache r/w)",
                  f"{usage.input_tokens}/{usage.output_tokens}/{usage.cache_read_tokens}/{usage.cache_write_tokens}")
    table.add_row("teacher cost", f"${usage.cost_usd:.4f}")
    console.print(table)


@app.command()
def dataset(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Write SFT/DPO/KTO JSONL files from distilled pairs and feedback (under <home>/datasets/)."""
    from storage.knowledge import KnowledgeBase
    from training.dataset import build_datasets
    from training.teachers import load_teacher

    settings = _settings()
    kb = KnowledgeBase(settings)
    report = build_datasets(settings, kb.store, kb, teacher=load_teacher(settings))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    table = Table(title=f"Datasets in {escape(report.out_dir)}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("by source")
    for name, count in report.files.items():
        table.add_row(name, str(count), ", ".join(f"{k}: {v}" for k, v in report.sources.get(name, {}).items()))
    console.print(table)
    if report.preference_pairs_added:
        console.print(f"{report.preference_pairs_added} new preference pair(s) stored.")


# --- evaluation and demo ------------------------------------------------------------------------
# --- training and the adapter registry ----------------------------------------------------------
@app.command()
def train(
    dataset_dir: Annotated[Optional[Path], typer.Option(
        "--dataset", help="Folder with sft_train.jsonl (and dpo.jsonl); --target adapter only.")] = None,
    target: Annotated[str, typer.Option(help="adapter (LoRA on the generator) | retriever (the embedder, from "
                                        "the distilled train pairs and hard negatives mined from the index)")] = "adapter",
    method: Annotated[str, typer.Option(help="sft | dpo")] = "sft",
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after N optimizer steps (default: epochs).")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Reuse to resume a crashed run.")] = None,
) -> None:
    """Train a LoRA adapter (vNNNN) or a retriever (rNNNN) in a separate process and register it as a
    candidate."""
    from storage.db import Store
    from training.train import TrainingError, train_adapter

    if target == "retriever":
        _train_retriever(max_steps, run_id)
        return
    if target != "adapter":
        err.print(f"--target is adapter or retriever, not {escape(target)!r}")
        raise typer.Exit(2)
    if dataset_dir is None:
        err.print("--dataset DIR is required to train an adapter (see `flywheel dataset`)")
        raise typer.Exit(2)
    settings = _settings()
    settings.ensure_dirs()
    store = Store(settings.db_path)

    def show(event: dict) -> None:
        if event.get("event") == "step":
            err.print(f"step {event['step']}/{event.get('max_steps')}  loss {event['loss']:.4f}")

    try:
        record = train_adapter(settings, store, dataset_dir, run_id=run_id, method=method, max_steps=max_steps,
                               on_event=show, actor="cli")
    except TrainingError as exc:
        err.print(f"[red]Training failed:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"{record.version} registered as candidate at {escape(str(record.path))} (final loss {record.final_loss})")


def _train_retriever(max_steps: int | None, run_id: str | None) -> None:
    """`flywheel train --target retriever`: mine, train in a child process (a progress bar on a terminal,
    about ten lines otherwise), register rNNNN as a candidate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from storage.knowledge import KnowledgeBase
    from training.cycle import _train_progress
    from training.retriever import train_retriever
    from training.train import TrainingError

    settings = _settings()
    kb = KnowledgeBase(settings)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    lines = _train_progress(lambda message: err.print(escape(message)))
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("Preparing", total=None)

        def mined(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        def step(event: dict) -> None:
            if event.get("event") == "step":
                progress.update(task, description=f"training, loss {event.get('loss', 0):.3f}",
                                completed=event["step"], total=event.get("max_steps"))
            if not err.is_terminal:
                lines(event)

        try:
            record = train_retriever(settings, kb.store, kb, run_id=run_id, max_steps=max_steps, on_event=step,
                                     on_progress=mined, actor="cli")
        except TrainingError as exc:
            err.print(f"[red]Training failed:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
    counts = record.data_counts
    console.print(f"{record.version} registered as candidate at {escape(record.path)}: {counts.get('pairs')} pairs → "
                  f"{counts.get('chunk_rows')} (question, chunk, hard negative) rows ({counts.get('mined_negatives')} "
                  f"negatives mined from the index) + {counts.get('answer_rows')} (question, answer) rows; "
                  f"final loss {record.final_loss:.4f}. Next: python -m training.retriever gate {record.version}")


@app.command()
def adapters(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List adapter versions with status, final loss and gate metrics."""
    from storage.db import Store
    from training.registry import list_adapters

    records = list_adapters(Store(_settings().db_path))
    if as_json:
        print(json.dumps([r.__dict__ for r in records], indent=2, default=str))
        return
    table = Table("version", "status", "final loss", "primary", "created", "promoted")
    for r in records:
        primary = r.metrics.get("primary")
        table.add_row(r.version, r.status, f"{r.final_loss:.4f}" if r.final_loss is not None else "",
                      f"{primary:.3f}" if primary is not None else "", r.created_at[:19], (r.promoted_at or "")[:19])
    console.print(table)


@app.command()
def promote(
    version: str,
    force: Annotated[bool, typer.Option(help="Promote even a version the gate rejected.")] = False,
) -> None:
    """Serve VERSION from the next answer on (the running bot swaps without a restart)."""
    from storage.db import Store
    from training.registry import RegistryError
    from training.registry import promote as do_promote

    settings = _settings()
    try:
        record = do_promote(settings, Store(settings.db_path), version, "cli", force=force)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    console.print(f"{record.version} is now promoted")


@app.command()
def rollback() -> None:
    """Re-promote the previously promoted adapter (the current one is marked rejected)."""
    from storage.db import Store
    from training.registry import RegistryError
    from training.registry import rollback as do_rollback

    settings = _settings()
    try:
        record = do_rollback(settings, Store(settings.db_path), "cli")
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    console.print(f"rolled back to {record.version}")


@app.command()
def gate(
    version: str,
    qa: Annotated[Optional[Path], typer.Option(help="Extra QA JSONL (question, answer/must_include).")] = None,
    apply: Annotated[bool, typer.Option(help="Promote or reject according to the decision.")] = True,
    force: Annotated[bool, typer.Option(help="Decide even with fewer than gate_min_items questions.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Evaluate VERSION against the current adapter (the base when none serves) on held-out distilled
    questions, 👍 answers and --qa, and promote it only if its final answers are significantly more
    accurate (95%) with no guard metric getting worse."""
    _run_gate(version, qa, apply=apply, as_json=as_json, force=force)


def _run_gate(version: str, qa: Path | list[Path] | None, apply: bool, as_json: bool, force: bool = False) -> None:
    from dataclasses import asdict

    from agent.evaluate import load_qa
    from storage.db import Store
    from storage.knowledge import KnowledgeBase
    from training.cycle import gate_questions
    from training.gate import PRODUCERS, VIEW_METRICS, run_gate
    from training.judge import CRITERIA as JUDGE_CRITERIA

    settings = _settings()
    store = Store(settings.db_path)
    items = gate_questions(store, settings.gate_max_items, load_qa(qa) if qa else [])
    if not items:
        err.print("No held-out questions or 👍 answers yet (run `flywheel distill`) and no --qa file given.")
        raise typer.Exit(2)
    decision, reports = run_gate(settings.model_copy(update={"max_new_tokens": settings.gate_max_new_tokens}),
                                 store, KnowledgeBase(settings, store), version, items, actor="cli", apply=apply,
                                 force=force)
    if as_json:
        print(json.dumps({"decision": asdict(decision), "reports": reports}, default=str))
        return
    first = next(iter(reports.values()))
    table = Table("metric (final answers, then drafts)", *[f"{name} ({r['label']})" for name, r in reports.items()],
                  title=f"{first['n']} questions ({first['answerable']} answerable, {first['unanswerable']} not)")

    def row(label: str, view: str, key: str) -> None:
        values = [r[view].get(key) for r in reports.values()]
        if any(v is not None for v in values):
            table.add_row(label, *["—" if v is None else f"{v:.3f}" for v in values])

    for key in VIEW_METRICS:  # what users see: decides
        row(key, "final", key)
    for producer in PRODUCERS:
        row(f"produced by {producer}", "final", f"produced_by_{producer}")
    table.add_section()
    for key in (*VIEW_METRICS, "cite_rate", "no_runaway"):  # the model's own drafts: reported
        row(f"draft {key}", "draft", key)
    if any("judge_usage" in r for r in reports.values()):  # Claude judged (reported, not decisive)
        table.add_section()
        for criterion in JUDGE_CRITERIA:
            key = f"judge_{criterion}"
            table.add_row(f"{key} (1–5)", *[f"{r[key]:.2f}" if key in r else "—" for r in reports.values()])
        table.add_row("judged / skipped", *[f"{r.get('judge_items', 0)} / {r.get('judge_skipped', 0)}"
                                            for r in reports.values()])
        table.add_row("judge cost", *[f"${r['judge_usage']['cost_usd']:.4f}" if "judge_usage" in r else "—"
                                      for r in reports.values()])
    console.print(table)
    console.print(f"accuracy Δ vs {escape(decision.reference)}: {decision.delta:+.3f}, 95% CI "
                  f"[{decision.ci_low:+.3f}, {decision.ci_high:+.3f}], sign test p = {decision.p_value:.3g} "
                  f"({decision.better} better, {decision.worse} worse of {decision.paired})")
    verdict = "[green]PROMOTE[/] " if decision.promote else "[red]REJECT[/] "
    console.print(verdict + escape("; ".join(decision.reasons)) + ("" if apply else " [dim](not applied)[/]"))
    for note in decision.notes:
        console.print(f"[dim]{escape(note)}[/]")


@app.command("eval")
def evaluate(
    qa: Annotated[Optional[list[Path]], typer.Option(help="JSONL: question, answer, must_include, source and/or "
                                                     "pages, or unanswerable: true (repeatable).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="Compare this adapter with the current one and the base "
                                                   "(held-out distilled questions + --qa); nothing is promoted.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write one result per line here.")] = None,
    docs: Annotated[Optional[Path], typer.Option(help="Ingest this corpus first.")] = None,
    limit: Annotated[int, typer.Option(help="Only the first N questions (0 = all).")] = 0,
    retrieval_only: Annotated[bool, typer.Option(help="Skip generation; score retrieval only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score retrieval (hit@1/5, MRR) and answers (accuracy, F1, ROUGE-L, groundedness, latency);
    with --adapter, compare that adapter with the current one and the base instead."""
    from agent.evaluate import render_summary, run_eval

    if adapter:
        _run_gate(adapter, qa, apply=False, as_json=as_json)
        return
    if not qa:
        err.print("--qa FILE is required (or --adapter VERSION).")
        raise typer.Exit(2)
    agent = _agent()
    if docs:
        report = agent.kb.ingest([docs])
        if not as_json:
            _print_ingest_report(report)
    summary = run_eval(agent, qa, out=out, limit=limit, retrieval_only=retrieval_only, progress=not as_json)
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(render_summary(summary))


@app.command()
def demo(
    questions: Annotated[int, typer.Option(help="How many sample questions to ask.")] = 4,
) -> None:
    """Ingest the bundled sample handbook and answer sample questions with citations."""
    from storage.samples import sample_handbook, sample_questions

    from agent.evaluate import is_accurate, is_refused
    from storage.samples import unanswerable_questions

    agent = _agent()
    console.rule("Ingesting the sample handbook")
    report = agent.kb.ingest([sample_handbook()])
    _print_ingest_report(report)
    answerable, unanswerable = sample_questions()[:questions], unanswerable_questions()[-1:]
    right = refused = 0
    for item in answerable + unanswerable:
        console.rule(escape(item["question"]))
        result = agent.answer(item["question"], on_token=lambda t: None, record=False)
        _print_answer(result)
        turn = {"produced_by": result.produced_by, "grounded": result.grounded}
        if item.get("unanswerable"):
            refused += is_refused(turn)
        else:
            right += is_accurate(result.answer, item, is_refused(turn))
    # Scored as `flywheel eval` scores (every key string present; refusals never count as right).
    console.print(f"\n[bold]{right}/{len(answerable)}[/] sample questions answered right (key facts present), "
                  f"[bold]{refused}/{len(unanswerable)}[/] unanswerable ones refused.")
    console.print("Try: [bold]flywheel ask \"…\"[/], [bold]flywheel chat[/], [bold]flywheel status[/]")


# --- the flywheel -------------------------------------------------------------------------------
@app.command()
def cycle(
    teacher: Annotated[Optional[str], typer.Option(help="offline | anthropic | auto (default: settings.teacher).")] = None,
    max_pairs: Annotated[Optional[int], typer.Option("--max-pairs", help="Cap on new distilled pairs.")] = None,
    force: Annotated[bool, typer.Option(help="Train even when there is little new data.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Cap training steps (smoke runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one flywheel cycle now: refresh ingest, distill, datasets, train, evaluate, promote."""
    from dataclasses import asdict

    from training.cycle import run_cycle

    say = (lambda message: None) if as_json else (lambda message: err.print(f"[dim]{escape(message)}[/]"))
    settings = _settings()
    _own_chroma(settings, "cycle")
    result = run_cycle(settings, trigger="command", teacher_kind=teacher, max_pairs=max_pairs, force=force,
                       max_steps=max_steps, on_progress=say)
    if as_json:
        print(json.dumps(asdict(result), default=str))
    else:
        console.print(result.summary())
    if result.status in ("failed", "busy"):
        raise typer.Exit(1)


@app.command()
def scheduler() -> None:
    """Run the flywheel schedule in the foreground (FLYWHEEL_CYCLE_CRON); the bot runs it too."""
    from training.scheduler import build_scheduler, start

    settings = _settings()
    _own_chroma(settings, "scheduler")  # its cycles ingest and search: only one process may own the store
    sched = build_scheduler(settings, blocking=True)
    if sched is None:
        err.print("FLYWHEEL_CYCLE_CRON is empty: nothing to schedule.")
        raise typer.Exit(2)
    console.print(f"Flywheel cycles on '{settings.cycle_cron}'. Ctrl-C stops.")
    try:
        start(sched, settings)
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    sys.exit(app())
