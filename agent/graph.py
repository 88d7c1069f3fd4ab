"""The answering agent: a LangGraph StateGraph with one node per step.

    route ─┬─ smalltalk ───────────────────────────────────────────────┐
           └─ condense → retrieve → select ─┬─ generate → check ──────┤→ finalize
                                            └─ not_found ─────────────┘

Conversation memory lives in langgraph's SQLite checkpointer, keyed by thread id (a Slack thread,
a terminal chat). Every answer is recorded as an interaction in SQLite with its citations,
retrieved chunks, model, adapter and per-stage timings.

    flywheel ask "What is the canary percentage for deploys?"
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, TypedDict

from agent.grounding import (FENCE_LINE, FENCED_BLOCK, EmbeddingCache, can_still_pass, check_draft, choose_quote,
                             excerpts, names, unknown_names)
from agent.prompts import CONDENSE_PROMPT, NOT_FOUND, build_messages, passage_label, says_not_found
from agent.retrieval import Hit, Retriever
from storage.config import Settings
from storage.db import Store
from storage.knowledge import KnowledgeBase
from storage.text import split_sentences, terms

log = logging.getLogger(__name__)

SMALLTALK = {
    "greeting": (
        re.compile(r"^\s*(hi|hello|hey|yo|hiya|good (morning|afternoon|evening))\b[\s!.,]*(there|flywheel|all|team)?[\s!.]*$", re.I),
        "Hi! Ask me anything about the team's documents and I'll answer with sources.",
    ),
    "thanks": (
        re.compile(r"^\s*(thanks?( you)?|thx|ty|cheers|great,? thanks?|perfect,? thanks?)\b[\s!.]*(a lot|so much)?[\s!.]*$", re.I),
        "You're welcome! React with 👍 or 👎 on my answers — it helps me get better.",
    ),
    "help": (
        re.compile(r"^\s*(help|what can you do\??|who are you\??)\s*$", re.I),
        "I answer questions from the team's documents, citing the passages I used. "
        "Ask me in a thread to follow up; react 👍/👎 to teach me.",
    ),
}
_POINTERS = "it|its|that|this|those|these|they|them|there|he|she|same|the former|the latter"
FOLLOW_UP = re.compile(rf"^\s*(and|but|or|so|also|then|what about|how about)\b|\b({_POINTERS})\b", re.I)
# Words that point back at the previous topic: the follow-up means "<that topic>", so it needs its words.
ANAPHOR = re.compile(rf"\b({_POINTERS}|their)\b", re.I)
MEMORY_DAYS = 30  # a thread idle this long is forgotten (its interactions stay in the store)
MAX_HISTORY_TURNS = 6  # question/answer pairs a thread remembers: a 135M prompt has no room for more


def _recent(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[dict[str, str]]:
    """The history reducer: append, keep the last MAX_HISTORY_TURNS turns (bounded checkpoints)."""
    return (old + new)[-2 * MAX_HISTORY_TURNS :]


def standalone(question: str, previous: str) -> tuple[str, list[str]]:
    """(query, retrieval queries) for a follow-up of `previous`, without asking a 135M model to rewrite it.

    When the follow-up points back with a pronoun or brings no content of its own ("how long does it
    last?"), it means the previous question's topic: the query is both questions. Otherwise its own words
    lead ("and the canary?" after a rollback question asks about the canary) and it inherits only the
    previous question's names ("SEV1", "Ledgerly": `grounding.names`); retrieval searches for it and for
    both questions together and fuses the rankings, so the new topic leads and the old one can't crowd
    it out."""
    joined = f"{question} ({previous.strip()})"
    if ANAPHOR.search(question) or not terms(question):
        return joined, [joined]
    # "what about SEV2?" replaces the name it was asked about: only a follow-up naming nothing inherits.
    carried = [] if names(question) else names(previous)
    query = f"{question} ({' '.join(carried)})" if carried else question
    return query, [query, joined]


class AnswerState(TypedDict, total=False):
    question: str
    sources: list[str] | None
    history: Annotated[list[dict[str, str]], _recent]  # kept across turns by the checkpointer, trimmed
    route: str
    query: str
    queries: list[str]  # what retrieval searches for (the query, and a follow-up's own words)
    hits: list[dict[str, Any]]
    best_dense: float
    unknown: list[str]  # names the question uses that occur nowhere in the documents ("GPU")
    retriever: str | None  # the retriever version whose embedder ranked the hits ("base" = configured one)
    context: list[dict[str, Any]]
    prompt: list[dict[str, str]]
    draft: str
    adapter: str | None
    answer: str
    produced_by: str  # model | quote | refusal | smalltalk
    grounded: bool
    citations: list[dict[str, Any]]
    check: dict[str, Any]  # per-sentence verdicts and the quote's score (kept in the turn record)
    timings: dict[str, float]


PRODUCERS = ("model", "quote", "refusal", "smalltalk")


@dataclass
class Answer:
    """One complete turn: the only contract between serving and learning.

    The gate scores it, `flywheel eval` writes it, and storage keeps it (table `interactions`) for the
    dataset builder: `draft` is what the model wrote before the check (DPO's rejected side is this, not
    the final text), `answer` what the user saw, `produced_by` which of the model's text (checked and
    trimmed), a quote of a passage, a refusal, or a smalltalk reply it is. `passages` are the chunks
    shown to the model, in prompt order ([n] in the answer is passages[n-1]): dicts with `chunk_id`,
    `source`, `page`, `heading`, `text`. `prompt` is the exact chat the model saw ([] when it never ran).
    """

    question: str
    answer: str
    grounded: bool
    citations: list[dict[str, Any]]
    retrieved: list[dict[str, Any]]
    timings_ms: dict[str, float]
    model: str | None
    adapter: str | None
    route: str
    produced_by: str = "refusal"
    draft: str = ""
    passages: list[dict[str, Any]] = field(default_factory=list)
    prompt: list[dict[str, str]] = field(default_factory=list)
    interaction_id: str | None = None
    thread_id: str | None = None
    retriever: str | None = None  # retriever version that searched ("base" = configured embedder; None = no search)
    query: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.produced_by == "refusal"

    def as_json(self) -> dict[str, Any]:
        """The `flywheel ask --json` contract."""
        return {
            "answer": self.answer,
            "produced_by": self.produced_by,
            "citations": [
                {k: c.get(k) for k in ("n", "source", "page", "heading", "chunk_id", "score")} for c in self.citations
            ],
            "grounded": self.grounded,
            "timings_ms": self.timings_ms,
            "model": self.model,
            "adapter": self.adapter,
            "retriever": self.retriever,
            "interaction_id": self.interaction_id,
        }


def _timed(state: AnswerState, name: str, started: float) -> dict[str, float]:
    return {**state.get("timings", {}), name: round((time.perf_counter() - started) * 1000, 1)}


class Agent:
    """Owns the knowledge base, the retriever, the (lazily loaded) generator and the compiled graph."""

    def __init__(self, settings: Settings, store: Store | None = None, kb: KnowledgeBase | None = None, generator=None):
        settings.ensure_dirs()
        self.settings = settings
        self.store = store or (kb.store if kb else Store(settings.db_path))
        self.kb = kb or KnowledgeBase(settings, self.store)
        self.retriever = Retriever(self.kb)
        # The check and the quote embed passage sentences with the configured embedder (their thresholds
        # were tuned on it); the same sentences recur, so their vectors are kept.
        self.embed = EmbeddingCache(lambda texts: self.kb.embedder.encode(texts))
        self._generator = generator
        self.graph = self._build()
        self._prune_daily()

    @property
    def generator(self):
        if self._generator is None:
            from agent.generation import load_generator

            self._generator = load_generator(self.settings, self.store)
        return self._generator

    # --- nodes --------------------------------------------------------------------------------
    def route(self, state: AnswerState) -> dict:
        question = state["question"].strip()
        for name, (pattern, _) in SMALLTALK.items():
            if pattern.match(question):
                return {"route": name}
        return {"route": "question"}

    def smalltalk(self, state: AnswerState) -> dict:
        reply = SMALLTALK[state["route"]][1]
        return {"answer": reply, "produced_by": "smalltalk", "grounded": True, "citations": [], "hits": []}

    def condense(self, state: AnswerState) -> dict:
        """Make a follow-up standalone (`standalone`); a hosted model (Claude, vLLM) rewrites it instead."""
        started = time.perf_counter()
        question = state["question"].strip()
        previous = [t["content"] for t in state.get("history", []) if t["role"] == "user"]
        query, queries = question, [question]
        if previous and (FOLLOW_UP.search(question) or len(question.split()) <= 5):
            if self.settings.backend == "transformers":
                query, queries = standalone(question, previous[-1])
            else:
                turns = "\n".join(f"{t['role']}: {t['content']}" for t in state["history"][-6:])
                prompt = CONDENSE_PROMPT.format(history=turns, question=question)
                query = self.generator.generate([{"role": "user", "content": prompt}], max_new_tokens=80).strip() or question
                queries = [query]
        return {"query": query, "queries": queries, "timings": _timed(state, "condense_ms", started)}

    def retrieve(self, state: AnswerState) -> dict:
        started = time.perf_counter()
        queries = state.get("queries") or [state["query"]]
        result = self.retriever.search(queries[0], k=self.settings.top_k, sources=state.get("sources"), also=queries[1:])
        timings = {**_timed(state, "retrieve_ms", started), **result.timings_ms}
        unknown = unknown_names(state["question"], self.kb.lexical.known)
        return {"hits": [h.as_dict() for h in result.hits], "best_dense": result.best_dense, "timings": timings,
                "retriever": result.retriever, "unknown": unknown}

    def select(self, state: AnswerState) -> dict:
        """Keep the best chunks that fit the prompt budget, best first (small models read the top best)."""
        context, used = [], 0
        for hit in state["hits"][: self.settings.context_chunks]:
            if context and used + hit["tokens"] > self.settings.context_tokens:
                break
            context.append(hit)
            used += hit["tokens"]
        if self.settings.evidence_runs > 0 and context:
            # A 135M model loses the answer in 1,000 tokens of passages; shown only the few runs of
            # sentences that best match the question, it restates one of them instead of inventing.
            shown, _ = excerpts(state["query"], [Hit(**h) for h in context], self.embed, self.settings.evidence_runs)
            context = [h.as_dict() for h in shown]
        return {"context": context}

    def answerable(self, state: AnswerState) -> str:
        if not state["context"] or state.get("best_dense", 0.0) < self.settings.min_relevance or state.get("unknown"):
            return "not_found"
        return "generate"

    def generate(self, state: AnswerState) -> dict:
        from langgraph.config import get_stream_writer

        write = get_stream_writer()
        started = time.perf_counter()
        passages = [Hit(**h) for h in state["context"]]
        messages = build_messages(state["query"], passages)
        if hasattr(self.generator, "refresh_adapter"):
            self.generator.refresh_adapter()  # pick up a newly promoted adapter between answers
        pieces: list[str] = []
        first_token_ms = None
        adapter = None
        judged = 0  # finished sentences already checked
        stream = self.generator.stream(messages, max_new_tokens=self.settings.max_new_tokens)
        for piece in stream:
            if first_token_ms is None:
                first_token_ms = round((time.perf_counter() - started) * 1000, 1)
                # Read while the decode holds the model: a hot swap can't change it under this answer.
                adapter = getattr(self.generator, "adapter", None)
            pieces.append(piece)
            write({"token": piece})
            text = "".join(pieces)
            if answer_complete(text, self.settings.max_answer_sentences):
                stream.close()  # frees the model now: the user would wait for text the check drops
                break
            finished = split_sentences(text, lines=True)[:-1]  # the last piece may still be growing
            if len(finished) > judged:  # a sentence just finished: judge the draft so far, once
                judged = len(finished)
                if self._hopeless(text, finished, state["query"], passages):
                    stream.close()  # the check will drop this draft whatever follows: quote now
                    break
        timings = _timed(state, "generate_ms", started)
        timings["first_token_ms"] = first_token_ms or timings["generate_ms"]
        return {"draft": "".join(pieces).strip(), "prompt": messages, "adapter": adapter, "timings": timings}

    def _hopeless(self, text: str, finished: list[str], query: str, passages: list[Hit]) -> bool:
        """With its `finished` sentences so far, the draft `text` can no longer be shown
        (`can_still_pass`). Drafts with code are left alone: a block is judged whole, once it is closed.
        Only the local model's drafts are cut: the first-sentence rule was measured on it, and a hosted
        model may open with a preface ("Based on the documents, …") before its supported answer."""
        if self.settings.backend != "transformers" or FENCE_LINE.search(text) or says_not_found(text):
            return False
        checked = check_draft("\n".join(finished), query, passages, self.embed)
        return not can_still_pass(checked, len(finished), self.settings.max_answer_sentences)

    def check(self, state: AnswerState) -> dict:
        """Show the model's supported sentences (produced_by "model"); when none hold up, quote the passage
        sentence that best matches the question ("quote"); when even that is a weak match, the
        documents don't say ("refusal"). A draft that refuses is overruled only by a strong quote."""
        started = time.perf_counter()
        passages = [Hit(**h) for h in state["context"]]
        draft = state["draft"]
        embed = self.embed
        refused = says_not_found(draft)
        checked = check_draft(draft, state["query"], passages, embed) if not refused else None
        # The quote may come from any retrieved hit, whole, not only from what the prompt showed.
        candidates = [Hit(**h) for h in state.get("hits", [])] or passages
        kept = checked is not None and checked.supported
        quote = None if kept else choose_quote(state["query"], candidates, embed)  # only when it may be shown
        needed = self.settings.min_quote_score + (self.settings.refusal_margin if refused else 0.0)
        extra = {"checks": [asdict(c) for c in checked.checks] if checked else [],
                 "quote_score": quote.score if quote else None}
        if kept:  # the draft's [n] number the prompt's passages
            return self._shown(state, started, extra, passages, checked.answer, checked.cited, "model")
        if quote is not None and quote.score >= needed:
            return self._shown(state, started, extra, candidates, quote.answer, quote.cited, "quote")
        return self._shown(state, started, extra)

    def not_found(self, state: AnswerState) -> dict:
        """Retrieval is weak (the best chunk's cosine is under `min_relevance`), so the model isn't asked.
        A chunk holding several short topics dilutes its cosine, though ("Parking: … Security: lost badges
        are reported within one hour"): a sentence that matches the question strongly is still quoted —
        held to the bar a quote must clear to overrule the model's own refusal.

        A question naming something the documents never mention ("on a GPU") is refused outright, naming
        it: whatever passage comes closest answers a different question."""
        started = time.perf_counter()
        if state.get("unknown"):
            return self._shown(state, started, {"checks": [], "quote_score": None, "unknown": state["unknown"]})
        candidates = [Hit(**h) for h in state.get("hits", [])]
        quote = choose_quote(state["query"], candidates, self.embed) if candidates else None
        extra = {"checks": [], "quote_score": quote.score if quote else None}
        if quote is None or quote.score < self.settings.min_quote_score + self.settings.refusal_margin:
            return self._shown(state, started, extra)
        return self._shown(state, started, extra, candidates, quote.answer, quote.cited, "quote")

    def _shown(self, state: AnswerState, started: float, extra: dict, candidates: list[Hit] | None = None,
               answer: str | None = None, cited: list[int] | None = None, produced_by: str = "refusal") -> dict:
        """What the user sees, for `check` and `not_found` alike: a grounded answer citing `candidates`
        (1-based `cited`), or — without an answer — the documents-don't-say reply."""
        timings = _timed(state, "check_ms", started)
        if answer is None:
            return {**self._not_found(state), "check": extra, "timings": timings}
        citations = [_citation(n, candidates[n - 1]) for n in cited or []]
        return {"answer": answer, "produced_by": produced_by, "grounded": True, "citations": citations,
                "check": extra, "timings": timings}

    def _not_found(self, state: AnswerState) -> dict:
        closest = [Hit(**h) for h in state.get("hits", [])[:3]]
        answer = NOT_FOUND
        if state.get("unknown"):
            listed = ", ".join(f"“{name}”" for name in dict.fromkeys(state["unknown"]))
            answer += f" They never mention {listed}."
        if closest:
            answer += " The closest passages I found:\n" + "\n".join(f"• {passage_label(h)}" for h in closest)
        return {"answer": answer, "produced_by": "refusal", "grounded": False, "citations": []}

    def finalize(self, state: AnswerState) -> dict:
        from langgraph.config import get_stream_writer

        write = get_stream_writer()
        for piece in shown_pieces(state["answer"]):  # checked text only: a surface streams it, never retracts
            write({"shown": piece})
        turns = [{"role": "user", "content": state["question"]}, {"role": "assistant", "content": state["answer"]}]
        return {"history": turns}

    # --- wiring -------------------------------------------------------------------------------
    def _build(self):
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph

        graph = StateGraph(AnswerState)
        for name in ("route", "smalltalk", "condense", "retrieve", "select", "generate", "check", "not_found", "finalize"):
            graph.add_node(name, getattr(self, name))
        graph.add_edge(START, "route")
        graph.add_conditional_edges("route", lambda s: "condense" if s["route"] == "question" else "smalltalk")
        graph.add_edge("smalltalk", "finalize")
        graph.add_edge("condense", "retrieve")
        graph.add_edge("retrieve", "select")
        graph.add_conditional_edges("select", self.answerable, ["generate", "not_found"])
        graph.add_edge("generate", "check")
        graph.add_edge("check", "finalize")
        graph.add_edge("not_found", "finalize")
        graph.add_edge("finalize", END)
        connection = sqlite3.connect(str(self.settings.checkpoints_path), check_same_thread=False)
        self.checkpointer = SqliteSaver(connection)
        self._one_shot = graph.compile()  # a question outside any thread has nothing to remember
        return graph.compile(checkpointer=self.checkpointer)

    # --- entry point --------------------------------------------------------------------------
    def answer(
        self,
        question: str,
        thread_id: str | None = None,
        *,
        surface: str = "cli",
        user_id: str | None = None,
        channel: str | None = None,
        sources: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        on_shown: Callable[[str], None] | None = None,
        record: bool = True,
    ) -> Answer:
        """Answer one question (a follow-up when `thread_id` has history).

        `on_token` receives the model's raw draft as it is written (unchecked: for a terminal's transient
        view, never for text a user keeps). `on_shown` receives the user-visible answer in append-only
        pieces, each already through the grounding check: their concatenation is exactly `Answer.answer`,
        so a surface that streams them never has to retract anything."""
        started = time.perf_counter()
        graph, config, options = self._one_shot, {}, {}
        if thread_id:
            # One checkpoint per turn, written when it ends: the steps in between are never resumed from.
            graph, config, options = self.graph, {"configurable": {"thread_id": thread_id}}, {"durability": "exit"}
        thread_id = thread_id or f"once:{uuid.uuid4().hex}"
        turn = {
            "question": question, "sources": sources, "route": "", "query": question, "hits": [], "context": [],
            "prompt": [], "draft": "", "adapter": None, "answer": "", "produced_by": "refusal", "grounded": False,
            "citations": [], "timings": {}, "best_dense": 0.0, "retriever": None, "unknown": [],
        }
        state: dict[str, Any] = {}
        for mode, chunk in graph.stream(turn, config, stream_mode=["custom", "values"], **options):
            if mode == "custom" and on_token and "token" in chunk:
                on_token(chunk["token"])
            elif mode == "custom" and on_shown and "shown" in chunk:
                on_shown(chunk["shown"])
            elif mode == "values":
                state = chunk
        timings = {**state.get("timings", {}), "total_ms": round((time.perf_counter() - started) * 1000, 1)}
        used_model = state["route"] == "question" and bool(state.get("prompt"))
        model = self.generator.name if used_model else None
        adapter = state.get("adapter") if used_model else None
        retrieved = [
            {"source": h["source"], "page": h["page"], "heading": h["heading"], "chunk_id": h["chunk_id"],
             "score": round(h["score"], 5), "dense": h["dense"], "lexical": h["lexical"]}
            for h in state.get("hits", [])
        ]
        passages = [{k: h.get(k) for k in ("chunk_id", "source", "page", "heading", "text")}
                    for h in state.get("context", [])] if used_model else []
        result = Answer(
            question=question, answer=state["answer"], grounded=state["grounded"], citations=state["citations"],
            retrieved=retrieved, timings_ms=timings, model=model, adapter=adapter, route=state["route"],
            produced_by=state.get("produced_by") or "refusal", draft=state.get("draft", "") if used_model else "",
            passages=passages, prompt=state.get("prompt") or [], thread_id=thread_id, query=state.get("query"),
            retriever=state.get("retriever"),
            extra={"check": state.get("check") or {}, "best_dense": state.get("best_dense", 0.0)},
        )
        if record:
            result.interaction_id = self.store.record_interaction(
                conversation_id=thread_id, channel=channel, user_id=user_id, surface=surface, question=question,
                condensed_question=state.get("query"), answer=result.answer, grounded=result.grounded,
                route=result.route, citations=result.citations, retrieved=retrieved,
                prompt=_prompt_text(state.get("prompt")), model=model, adapter=adapter, timings=timings,
                draft=result.draft or None, produced_by=result.produced_by, passages=passages,
                retriever=result.retriever,
            )
        return result

    def forget(self, thread_id: str) -> None:
        self.checkpointer.delete_thread(thread_id)

    def _prune_daily(self) -> None:
        """Prune old threads at most once a day, so every `flywheel ask` doesn't scan the checkpoints."""
        today = time.strftime("%Y-%m-%d")
        if self.store.get_kv("threads_pruned_on") == today:
            return
        try:
            gone = self.prune_threads(MEMORY_DAYS)
            if gone:
                log.info("forgot %d conversation threads idle for %d days", gone, MEMORY_DAYS)
            self.store.set_kv("threads_pruned_on", today)
        except Exception:  # memory housekeeping must never stop answering
            log.warning("pruning old threads failed", exc_info=True)

    def prune_threads(self, older_than_days: float) -> int:
        """Forget threads whose last turn is older than `older_than_days`; returns how many went.
        Their interactions (questions, answers, votes) stay in the store: only the memory goes."""
        from datetime import datetime, timedelta, timezone

        cutoff = (datetime.now(timezone.utc) - timedelta(days=older_than_days)).isoformat()
        last: dict[str, str] = {}
        for item in self.checkpointer.list(None):
            thread = item.config["configurable"]["thread_id"]
            last[thread] = max(last.get(thread, ""), item.checkpoint["ts"])
        stale = [thread for thread, ts in last.items() if ts < cutoff]
        for thread in stale:
            self.checkpointer.delete_thread(thread)
        return len(stale)


def answer_complete(text: str, max_sentences: int) -> bool:
    """True once a draft has said enough: `max_sentences` finished sentences, or a finished paragraph
    followed by a blank line (a small model then starts a new, unasked topic). A colon before the blank
    line announces a list, so that paragraph isn't finished."""
    if max_sentences <= 0:
        return False
    if len(FENCE_LINE.findall(text)) % 2:  # inside a code block: never cut code off
        return False
    text = FENCED_BLOCK.sub("[code]. ", text)  # a whole code block counts as one sentence
    head, blank, _ = text.partition("\n\n")
    if blank and re.search(r"[.!?](\s*\[\d+\])*\s*$", head) and len(head) > 20:
        return True
    finished = split_sentences(text, lines=True)[:-1]  # the last piece may still be growing
    return len(finished) >= max_sentences


def shown_pieces(answer: str) -> list[str]:
    """The answer cut after each sentence's end (its [n] markers stay with it), never inside a quotation
    (“…”) or a code block, whitespace kept, so the pieces concatenate back to exactly `answer`."""
    pieces: list[str] = []
    for part in re.split(r"(?<=[.!?。！？])(?=\s)", answer):
        # A piece never ends inside a quotation or a code block, so only the last one can be open.
        last = pieces[-1] if pieces else ""
        inside = last.count("“") > last.count("”") or len(FENCE_LINE.findall(last)) % 2
        if inside:
            pieces[-1] += part
        elif part:
            pieces.append(part)
    return pieces


def _citation(n: int, hit: Hit) -> dict[str, Any]:
    return {"n": n, "source": hit.source, "page": hit.page, "heading": hit.heading, "chunk_id": hit.chunk_id,
            "score": round(hit.score, 5), "text": hit.text}


def _prompt_text(messages: list[dict[str, str]] | None) -> str | None:
    if not messages:
        return None
    import json

    return json.dumps(messages, ensure_ascii=False)
