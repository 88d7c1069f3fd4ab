"""The Claude judge of the eval gate: the real anthropic SDK against the loopback fake of /v1/messages
(tests/fakeanthropic.py), and once through evaluate_adapter on the tiny model (seconds, after the
session fixtures: the handbook ingest and the tiny model, ~25 s on 2 cores).

    python -m pytest -q tests/test_judge.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from storage.config import Settings
from storage.samples import sample_questions, unanswerable_questions
from tests.fakeanthropic import RATE_LIMITED, fake_messages, tool_use
from training.gate import compare, evaluate_adapter, make_generator
from training.judge import CRITERIA, ClaudeJudge, load_judge

PASSAGES = [{"chunk_id": "c1", "source": "oncall.md", "page": None, "heading": "On-Call > Paging",
             "text": "Acknowledge a page within 15 minutes.", "score": 0.9}]
QUESTION = "How soon must I acknowledge a page?"
REFERENCE = "Within 15 minutes."


def _scores(relevance, groundedness, coherence, similarity, rationale="ok") -> dict:
    return tool_use("record_scores", {"relevance": relevance, "groundedness": groundedness,
                                      "coherence": coherence, "similarity": similarity, "rationale": rationale})


def _keyed(home: Path, url: str, **kw) -> Settings:
    return Settings(home=home, anthropic_base_url=url, anthropic_api_key=SecretStr("sk-test"), **kw)


def test_judge_scores_through_the_sdk_retries_clamps_skips_and_accounts(tmp_path: Path) -> None:
    responses = [
        (429, {"retry-after": "0"}, RATE_LIMITED),  # retried
        (200, {}, _scores(4, 5, 3, 4, "Correct\n and cited.")),
        (200, {}, _scores(9, 0, "2", 3.6)),  # out of range / a string / a float: clamped and rounded
        (200, {}, _scores(4, "high", 3, 4)),  # not a number: skipped
        (200, {}, tool_use("record_scores", "{not json")),  # malformed tool input: skipped
        (200, {}, tool_use("record_scores", {"relevance": 4})),  # missing criteria: skipped
    ]
    with fake_messages(responses) as (url, seen):
        judge = load_judge(_keyed(tmp_path / "home", url))
        assert isinstance(judge, ClaudeJudge) and judge.model == "claude-sonnet-4-6"
        verdicts = [judge.score(QUESTION, REFERENCE, "Within 15 minutes [1].", PASSAGES) for _ in range(5)]
    assert verdicts[0] == {"relevance": 4, "groundedness": 5, "coherence": 3, "similarity": 4,
                           "rationale": "Correct and cited."}
    assert verdicts[1] == {"relevance": 5, "groundedness": 1, "coherence": 2, "similarity": 4, "rationale": "ok"}
    assert verdicts[2:] == [None, None, None]
    assert (judge.judged, judge.skipped, len(seen)) == (2, 3, 6)

    body = seen[0]["body"]
    assert seen[0]["path"] == "/v1/messages" and body == seen[1]["body"]  # the 429 was retried as is
    assert body["tool_choice"] == {"type": "tool", "name": "record_scores"}
    schema = body["tools"][0]["input_schema"]
    assert body["tools"][0]["name"] == "record_scores" and set(CRITERIA) <= set(schema["required"])
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"} and "1 (worst)" in body["system"][0]["text"]
    prompt = body["messages"][0]["content"]
    for text in (QUESTION, REFERENCE, "Within 15 minutes [1].", "[1] oncall.md — On-Call > Paging",
                 PASSAGES[0]["text"]):
        assert text in prompt

    usage = judge.usage  # 5 answered requests (the 429 carries no usage)
    assert (usage.requests, usage.input_tokens, usage.output_tokens, usage.cache_write_tokens) == (5, 500, 250, 1000)
    assert usage.cost_usd == pytest.approx(5 * (100 * 3.0 + 50 * 15.0 + 200 * 3.75) / 1e6)


def test_failing_judge_skips_items_then_stops_asking(tmp_path: Path) -> None:
    down = (503, {"retry-after": "0"}, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    with fake_messages([down] * 6 + [(200, {}, _scores(5, 5, 5, 5))]) as (url, seen):
        judge = ClaudeJudge(_keyed(tmp_path / "home", url), attempts=2, max_failures=3)
        verdicts = [judge.score(QUESTION, REFERENCE, "x", []) for _ in range(4)]
    assert verdicts == [None] * 4 and judge.disabled
    assert len(seen) == 6 and (judge.judged, judge.skipped) == (0, 4)  # 3 items x 2 attempts, then no more


def test_no_key_no_judge(tmp_path: Path) -> None:
    assert load_judge(Settings(home=tmp_path / "a")) is None
    assert load_judge(Settings(home=tmp_path / "b", anthropic_api_key=SecretStr("  "))) is None
    judge = load_judge(Settings(home=tmp_path / "c", anthropic_api_key=SecretStr("sk-x")), model="claude-haiku-4-5")
    assert judge is not None and judge.model == "claude-haiku-4-5"


def test_gate_reports_judge_means_and_usage_but_decides_without_them(settings, kb_store, tmp_path) -> None:
    kb, store = kb_store
    qa = sample_questions()[:2] + unanswerable_questions()[:1]
    generator = make_generator(settings)
    with fake_messages([(200, {}, _scores(4, 5, 3, 4)), (200, {}, _scores(2, 3, 5, 2))]) as (url, seen):
        # no key: no judge, and nothing is sent even with the fake's address configured
        plain = evaluate_adapter(settings.model_copy(update={"anthropic_base_url": url}), store, kb, None, qa,
                                 generator=generator)
        assert seen == [] and not [k for k in plain if k.startswith("judge")]
        keyed = settings.model_copy(update={"anthropic_base_url": url, "anthropic_api_key": SecretStr("sk-test")})
        judged = evaluate_adapter(keyed, store, kb, None, qa, generator=generator, out_dir=tmp_path / "out")
    assert len(seen) == 2  # the unanswerable question is not judged
    assert {k: judged[f"judge_{k}"] for k in CRITERIA} == {"relevance": 3.0, "groundedness": 4.0,
                                                           "coherence": 4.0, "similarity": 3.0}
    assert (judged["judge_items"], judged["judge_skipped"], judged["judge_model"]) == (2, 0, "claude-sonnet-4-6")
    assert judged["judge_usage"]["requests"] == 2 and judged["judge_usage"]["cost_usd"] > 0
    assert judged["draft"] == plain["draft"]  # the judge adds to the report, changes none of its metrics

    rows = [json.loads(line) for line in (tmp_path / "out" / "eval_base.jsonl").read_text().splitlines()]
    assert [r.get("judge_relevance") for r in rows] == [4, 2, None]
    assert all(r["judge_of"] in ("draft", "final") and r["judge_rationale"] == "ok" for r in rows[:2])
    asked = [s["body"]["messages"][0]["content"] for s in seen]
    assert all(any(item["question"] in prompt for prompt in asked) for item in qa[:2])

    decision = compare(judged, plain, None, 0.02, 0.02)
    assert decision.promote == compare(plain, plain, None, 0.02, 0.02).promote  # judge scores don't decide
    assert decision.reasons == compare(plain, plain, None, 0.02, 0.02).reasons
    assert decision.notes and "relevance 3.00" in decision.notes[0] and "not used to decide" in decision.notes[0]
    assert compare(plain, plain, None, 0.02, 0.02).notes == []
