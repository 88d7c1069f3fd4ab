"""The eval gate end to end: the real Agent (retrieval, prompt, grounding check) and the real gate code
on the ingested sample handbook, with a scripted model in place of SmolLM2 — a fake model whose answers
depend on the adapter it was told to use, so "better", "equal" and "worse" adapters are known facts and
the gate's verdict can be checked against them (about 80 agent answers per gate run).

    python -m pytest -q tests/test_gate.py
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from agent.grounding import sentences
from agent.prompts import NOT_FOUND
from storage.samples import sample_questions, unanswerable_questions
from storage.text import terms
from training import registry
from training.cycle import gate_questions
from training.gate import run_gate

# Written from storage/samples/handbook: (question, strings a correct answer contains).
HANDBOOK_QA = [
    ("Which tool do we use for feature flags?", ["Switchboard"]),
    ("How long does a rollback take to complete?", ["4 minutes"]),
    ("How long must a release run on staging before it goes to production?", ["1 hour"]),
    ("How quickly does turning off a feature flag take effect?", ["60 seconds"]),
    ("Within how many days of reaching 100% must a feature flag be removed?", ["90 days"]),
    ("How long is the launch freeze before a major customer launch?", ["48 hours"]),
    ("How do I install the shipit CLI?", ["brew install northwind/tap/shipit"]),
    ("How long does an on-call shift last?", ["7 days"]),
    ("When does the on-call handoff happen?", ["Monday at 10:00"]),
    ("What is the weekly stipend for the primary on-call?", ["$400"]),
    ("How do I declare an incident in Slack?", ["/incident declare"]),
    ("Within how many days must action items from a SEV1 postmortem be done?", ["30 days"]),
    ("Which cost center do platform team members use for expenses?", ["PLAT-4100"]),
    ("How much is the home office stipend for new employees?", ["$600"]),
    ("From what amount is a receipt required for an expense?", ["$25"]),
    ("What laptop do platform engineers get?", ["MacBook Pro", "32 GB"]),
    ("What is the robot simulator in the local dev stack called?", ["Tumbleweed"]),
    ("How long must work passwords be?", ["16 characters"]),
    ("After how much inactivity does the laptop screen lock automatically?", ["5 minutes"]),
    ("How soon does Security confirm a phishing report?", ["4 business hours"]),
]
HANDBOOK_UNANSWERABLE = [
    "What is the dress code in the office?",
    "Which programming language is the mission-router written in?",
    "How many vacation days do employees get each year?",
]


def handbook_items() -> list[dict]:
    """42 items: the 16 sample questions, 20 more written from the handbook, 6 it doesn't answer."""
    items = [dict(q) for q in sample_questions()]
    items += [{"id": f"gate-{i:02d}", "question": q, "must_include": m} for i, (q, m) in enumerate(HANDBOOK_QA)]
    items += [dict(q, unanswerable=True) for q in unanswerable_questions()[:3]]  # the demo's 4th: the wifi password
    items += [{"id": f"gate-u{i}", "question": q, "unanswerable": True} for i, q in enumerate(HANDBOOK_UNANSWERABLE)]
    return items


ITEMS = handbook_items()
ANSWERABLE = [i["question"] for i in ITEMS if not i.get("unanswerable")]


class ScriptedModel:
    """A fake model behind the generator interface of agent/generation.py. It reads the prompt the agent
    built (numbered passages + question) and, per adapter, either knows a question — it then copies the
    passage sentence holding every must_include string, with that passage's [n] — or answers confidently
    wrong: a real, supported sentence of a passage that doesn't hold the answer (so the grounding check
    shows it, and only its accuracy is wrong). Questions it has no answer key for get the not-found reply,
    or, for an adapter that `hallucinates`, a passage sentence all the same."""

    name = "scripted-lm"

    def __init__(self, skills: dict[str | None, set[str]], hallucinates: set[str | None] = frozenset()):
        self.skills = skills  # adapter version (None = base) -> the questions it knows
        self.hallucinates = hallucinates
        self.keys = {i["question"]: i.get("must_include") or [] for i in ITEMS}
        self.adapter: str | None = None
        self.asked: list[tuple[str | None, str]] = []

    def use_adapter(self, path, version: str | None) -> bool:
        self.adapter = version
        return True

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> Iterator[str]:
        question, passages = read_prompt(messages)
        self.asked.append((self.adapter, question))
        yield self._answer(question, passages)

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> str:
        return "".join(self.stream(messages, max_new_tokens))

    def _answer(self, question: str, passages: list[str]) -> str:
        wanted = self.keys.get(question)
        if not wanted:
            return self._wrong(question, passages, []) if self.adapter in self.hallucinates else NOT_FOUND
        if question in self.skills[self.adapter]:
            for n, text in enumerate(passages, start=1):
                for sentence in sentences(text):
                    if all(w.casefold() in sentence.casefold() for w in wanted):
                        return f"{sentence} [{n}]"
        return self._wrong(question, passages, wanted)

    @staticmethod
    def _wrong(question: str, passages: list[str], wanted: list[str]) -> str:
        for n, text in enumerate(passages, start=1):
            for sentence in sentences(text):
                novel = terms(sentence) - terms(question)
                if len(novel) >= 3 and not any(w.casefold() in sentence.casefold() for w in wanted):
                    return f"{sentence} [{n}]"
        return NOT_FOUND


def read_prompt(messages: list[dict[str, str]]) -> tuple[str, list[str]]:
    """(question, passage texts) from agent/prompts.py's user message: `Context:\\n[1] label\\ntext\\n\\n...
    \\n\\nQuestion: q`."""
    context, _, question = messages[-1]["content"].rpartition("\n\nQuestion: ")
    blocks = re.split(r"\n\n(?=\[\d+\] )", context.removeprefix("Context:\n"))
    return question.strip(), [block.partition("\n")[2] for block in blocks if block.strip()]


def _register(settings, store, *versions: str) -> None:
    """Candidate rows with an adapter folder: the scripted model needs no weights."""
    for version in versions:
        folder = settings.adapters_dir / version
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        registry.register(settings, store, version=version, path=folder, base_model="scripted-lm")


def _gate(settings, store, kb, model, version, qa=None, **kw):
    return run_gate(settings, store, kb, version, qa or ITEMS, generator=model, judge=None, **kw)


@pytest.fixture
def gate_env(settings, kb_store):
    kb, store = kb_store
    assert len(ITEMS) >= settings.gate_min_items == 40
    return settings, store, kb


HALF = set(ANSWERABLE[::2])


def test_significantly_better_candidate_is_promoted_then_a_worse_one_is_rejected(gate_env):
    settings, store, kb = gate_env
    _register(settings, store, "v0001", "v0002")
    model = ScriptedModel({None: HALF, "v0001": set(ANSWERABLE), "v0002": set(ANSWERABLE[:6])})

    decision, reports = _gate(settings, store, kb, model, "v0001")
    assert set(reports) == {"base", "candidate"} and decision.reference == "base"
    base, better = reports["base"], reports["candidate"]
    assert (better["n"], better["answerable"], better["unanswerable"]) == (42, 36, 6)
    assert better["primary"] > base["primary"] + 0.3  # it answers the other half too
    assert decision.promote, decision.reasons
    assert decision.worse == 0 and decision.better >= 12 and decision.paired == 36
    assert decision.delta == pytest.approx(better["primary"] - base["primary"], abs=1e-3)
    assert 0 < decision.ci_low < decision.delta < decision.ci_high and decision.p_value < 0.001
    assert f"95% CI [{decision.ci_low:+.3f}, {decision.ci_high:+.3f}]" in decision.reasons[0]
    assert "sign test p = " in decision.reasons[0]
    # what users saw: the copied sentences shown as the model's own, cited, grounded
    final = better["final"]
    assert sum(final[f"produced_by_{kind}"] for kind in ("model", "quote", "refusal")) == pytest.approx(1.0)
    assert final["produced_by_model"] > 0.5 and final["citation_validity"] >= base["final"]["citation_validity"]
    assert final["correct_refusal"] == base["final"]["correct_refusal"] > 0.5  # both refuse what the docs lack
    assert better["draft"]["cite_rate"] == 1.0  # the drafts are the secondary, reported view
    record = registry.get_adapter(store, "v0001")
    assert record.status == "promoted" and registry.current(store).version == "v0001"
    assert record.metrics["decision"]["promote"] is True and record.metrics["decision"]["p_value"] < 0.001
    assert len(record.metrics["items"]) == 42

    # Now v0001 serves: the next candidate is compared with it, and knowing less loses.
    decision, reports = _gate(settings, store, kb, model, "v0002", include_base=False)
    assert set(reports) == {"current", "candidate"} and decision.reference == "v0001"
    assert not decision.promote and decision.delta < 0 and decision.better == 0 and decision.worse >= 12
    assert "not a significant gain" in decision.reasons[0]
    assert registry.get_adapter(store, "v0002").status == "rejected"
    assert registry.current(store).version == "v0001"  # serving untouched
    assert {adapter for adapter, _ in model.asked} == {None, "v0001", "v0002"}


def test_equal_and_barely_better_candidates_are_rejected(gate_env):
    settings, store, kb = gate_env
    _register(settings, store, "v0001", "v0002")
    two_more = HALF | set(sorted(set(ANSWERABLE) - HALF)[:2])
    model = ScriptedModel({None: HALF, "v0001": set(HALF), "v0002": two_more})

    same, reports = _gate(settings, store, kb, model, "v0001")
    assert reports["candidate"]["final"] == reports["base"]["final"]
    assert not same.promote and (same.delta, same.better, same.worse, same.p_value) == (0.0, 0, 0, 1.0)
    assert "not a significant gain" in same.reasons[0]
    assert registry.get_adapter(store, "v0001").status == "rejected"

    barely, _ = _gate(settings, store, kb, model, "v0002")
    assert not barely.promote and barely.worse == 0 and 1 <= barely.better <= 2
    assert barely.delta >= settings.promote_margin  # a gain above the minimum effect size, but chance can do it
    assert barely.p_value >= 0.5 and barely.ci_low <= 0 and "not a significant gain at 95%" in barely.reasons[0]
    assert registry.get_adapter(store, "v0002").status == "rejected"
    assert registry.current(store) is None


def test_more_accurate_candidate_that_answers_the_unanswerable_is_stopped_by_a_guard(gate_env):
    settings, store, kb = gate_env
    _register(settings, store, "v0001")
    model = ScriptedModel({None: HALF, "v0001": set(ANSWERABLE)}, hallucinates={"v0001"})
    decision, reports = _gate(settings, store, kb, model, "v0001")
    assert decision.p_value < 0.001 and decision.ci_low > 0  # significantly more accurate...
    assert reports["candidate"]["final"]["correct_refusal"] < reports["base"]["final"]["correct_refusal"]
    assert not decision.promote  # ...but it states things the documents don't say
    assert any(r.startswith("guard correct_refusal (final) got worse") for r in decision.reasons)
    assert registry.get_adapter(store, "v0001").status == "rejected"


def test_too_few_items_refuse_promotion_unless_forced(gate_env):
    settings, store, kb = gate_env
    _register(settings, store, "v0001")
    model = ScriptedModel({None: set(), "v0001": set(ANSWERABLE)})
    few = ITEMS[:12]
    decision, _ = _gate(settings, store, kb, model, "v0001", qa=few, apply=False)
    assert not decision.promote and decision.reasons[0].startswith("only 12 held-out items; need 40")
    assert decision.p_value < 0.05 and not decision.forced  # the gain itself was significant
    assert registry.get_adapter(store, "v0001").status == "candidate"  # apply=False: nothing changed

    forced, _ = _gate(settings, store, kb, model, "v0001", qa=few, force=True)
    assert forced.promote and forced.forced and "forced" in forced.reasons[0]
    assert registry.get_adapter(store, "v0001").status == "promoted"


def test_gate_questions_take_the_admin_file_liked_answers_and_heldout_pairs(store):
    from storage.db import now

    for i in range(6):
        store.insert("qa_pairs", {"id": f"p{i}", "question": f"Held-out question {i}?", "answer": f"Answer {i}.",
                                     "split": "heldout" if i < 5 else "train", "teacher": "offline",
                                     "created_at": now()})
    answers = {"liked": ("What is the canary share?", "5% of traffic [1].", "model", 1, [1, 1]),
               "mixed": ("Who approves $600?", "Your manager [1].", "model", 1, [1, -1]),
               "disliked": ("When is the freeze?", "In July [1].", "model", 1, [-1]),
               "refusal": ("What is the wifi password?", NOT_FOUND, "refusal", 0, [1]),
               "followup": ("and for how long?", "For 30 minutes [1].", "quote", 1, [1])}
    for key, (question, answer, produced_by, grounded, votes) in answers.items():
        interaction = store.record_interaction(
            surface="slack", question=question, answer=answer, grounded=grounded, produced_by=produced_by,
            route="question", citations=[], retrieved=[], id=key,
            condensed_question="What is the canary share? and for how long?" if key == "followup" else question)
        for n, vote in enumerate(votes):
            store.set_vote(interaction, f"U{n}", vote, source="reaction")
    admin = [{"id": "a1", "question": "Held-out question 0?", "must_include": ["0"]},
             {"id": "a2", "question": "What does the admin ask?", "answer": "This."}]

    items = gate_questions(store, 4, admin)
    by_id = {i["id"]: i for i in items}
    assert list(by_id)[:2] == ["a1", "a2"] and by_id["a1"]["origin"] == "qa"  # all of the admin's file, first
    liked = [i for i in items if i["origin"] == "feedback"]
    assert {i["id"] for i in liked} == {"feedback:liked", "feedback:followup"}  # net 👍, not refusals
    assert by_id["feedback:liked"]["answer"] == "5% of traffic [1]."  # what the user liked is the reference
    assert by_id["feedback:followup"]["question"] == "What is the canary share? and for how long?"
    heldout = [i for i in items if i["origin"] == "heldout"]
    assert len(liked) + len(heldout) <= 4 and "Held-out question 0?" not in {i["question"] for i in heldout}
    assert all(i["id"] != "p5" for i in items)  # train pairs are never gate questions
    assert len(gate_questions(store, 60)) == 2 + 5  # 👍 and held-out fill what the other can't
