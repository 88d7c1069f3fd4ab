"""Training datasets from distilled pairs and feedback, corrections and the team-answers document, and
the stages that train on them (SFT with its held-out loss, KTO on voted drafts) on the tiny model.

    python -m pytest -q tests/test_dataset.py
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.prompts import NOT_FOUND, SYSTEM_PROMPT, build_messages, passage_label
from agent.retrieval import Hit
from storage.config import Settings
from storage.db import Store
from storage.knowledge import KnowledgeBase
from training.dataset import build_datasets, correction_allowed
from training.distill import distill
from training.offline_teacher import OfflineTeacher

ADMIN = "UADMIN"
QUESTION = "How fast do I ack a page?"
SUPPORTED = "Acknowledge a page within 15 minutes."  # oncall.md, "Paging and escalation policy"
UNSUPPORTED = "The guest wifi password for the Lisbon office is rotated every Monday by Ines Duarte."
WIFI = "What is the guest wifi password for the Lisbon office?"


def _as_hit(row: dict) -> Hit:
    return Hit(row["id"], row["source"], row["page"], row["heading"], row["text"], 0.0, tokens=row["tokens"])


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _paging_chunk(store: Store) -> dict[str, Any]:
    return store.query("SELECT * FROM chunks WHERE heading LIKE '%Paging%' AND text LIKE '%within 15 minutes%' "
                       "ORDER BY ord LIMIT 1")[0]


def turn(store: Store, chunk: dict[str, Any] | None, *, question: str = QUESTION, draft: str | None,
         answer: str, produced_by: str = "model", surface: str = "slack") -> str:
    """One recorded interaction the way Agent.answer stores it: prompt, passages, draft, final answer."""
    passages = [{"chunk_id": chunk["id"], **{k: chunk[k] for k in ("source", "page", "heading", "text")}}] \
        if chunk else []
    return store.record_interaction(
        surface=surface, question=question, condensed_question=question, answer=answer, grounded=True,
        route="question", prompt=json.dumps(build_messages(question, [_as_hit(chunk)])) if chunk else None,
        citations=[{"n": 1, "chunk_id": chunk["id"]}] if chunk else [], draft=draft, produced_by=produced_by,
        passages=passages, channel="C0001", conversation_id="C0001:1700000000.000100",
    )


def _admin(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"admin_users": ADMIN, **update})


# --- SFT / DPO / KTO files from distilled pairs and feedback ----------------------------------------
@pytest.fixture(scope="module")
def distilled(handbook_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    home = tmp_path_factory.mktemp("dataset") / "home"
    shutil.copytree(handbook_home, home)
    settings = Settings(home=home, admin_users=ADMIN)
    kb = KnowledgeBase(settings, Store(settings.db_path))
    assert distill(settings, kb.store, OfflineTeacher()).kept >= 30
    yield kb
    kb.store.close()


def _passages_in(content: str, kb: KnowledgeBase) -> list[Hit]:
    """Recover the passages of a prompt from the chunk table, in order."""
    found: list[Hit] = []
    rows = kb.store.query("SELECT * FROM chunks")
    for n in range(1, 10):
        match = [r for r in rows if f"[{n}] {passage_label(_as_hit(r))}\n{r['text'].strip()}" in content]
        if not match:
            break
        found.append(_as_hit(match[0]))
    return found


def test_build_datasets_formats_feedback_and_loads(distilled: KnowledgeBase, tmp_path: Path) -> None:
    from datasets import load_dataset

    kb, store = distilled, distilled.store
    chunk = _paging_chunk(store)
    messages = build_messages(QUESTION, [_as_hit(chunk)])
    # The user saw a quote (the check threw the draft out); DPO rejects the draft, not the quote.
    down = turn(store, chunk, draft="Within an hour [1].", answer="The documents say: “…” [1]", produced_by="quote")
    store.set_vote(down, ADMIN, -1, "button", correction=SUPPORTED)
    up = turn(store, chunk, draft="Within 15 minutes [1].", answer="Within 15 minutes [1].")
    store.set_vote(up, "U2", 1, "reaction")

    report = build_datasets(kb.settings, store, kb, out_dir=tmp_path / "ds", teacher=OfflineTeacher())
    assert (kb.settings.datasets_dir / "latest").read_text().strip() == str(tmp_path / "ds")
    train, heldout = _read(tmp_path / "ds" / "sft_train.jsonl"), _read(tmp_path / "ds" / "sft_heldout.jsonl")
    assert report.files["sft_train.jsonl"] == len(train) and report.files["sft_heldout.jsonl"] == len(heldout) > 0
    sources = report.sources["sft_train.jsonl"]
    assert sources["distilled"] >= 20 and sources["not_found"] >= 1
    assert sources["feedback_up"] == 1 and sources["correction"] == 1
    assert report.corrections == {"used": 1}

    pairs = {p["id"]: p for p in store.query("SELECT * FROM qa_pairs")}
    for example in train + heldout:
        prompt, answer = example["prompt"], example["completion"][0]["content"]
        assert prompt[0] == {"role": "system", "content": SYSTEM_PROMPT} and prompt[1]["role"] == "user"
        if example["source"] == "correction":
            assert prompt == messages and answer == "Acknowledge a page within 15 minutes [1]."  # cited
        if example["source"] not in ("distilled", "not_found"):
            continue
        pair = pairs[example["id"].removesuffix("-nf")]
        passages = _passages_in(prompt[1]["content"], kb)
        assert prompt == build_messages(pair["question"], passages)  # exactly the agent's prompt
        ids = [p.chunk_id for p in passages]
        if example["source"] == "not_found":
            assert answer == NOT_FOUND and pair["chunk_id"] not in ids
        else:
            n = ids.index(pair["chunk_id"]) + 1
            assert f"[{n}]" in answer and answer.replace(f" [{n}]", "") == pair["answer"]
            assert 2 <= len(passages) <= kb.settings.context_chunks

    dpo = _read(tmp_path / "ds" / "dpo.jsonl")
    assert len(dpo) == 1 and dpo[0]["prompt"] == messages
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": "Acknowledge a page within 15 minutes [1]."}]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": "Within an hour [1]."}]  # the stored draft
    kto = _read(tmp_path / "ds" / "kto.jsonl")  # the 👎 was on a quote: only the 👍 draft is a vote on a draft
    assert [(k["label"], k["completion"][0]["content"]) for k in kto] == [(True, "Within 15 minutes [1].")]

    again = build_datasets(kb.settings, store, kb, out_dir=tmp_path / "ds2", teacher=OfflineTeacher())
    assert again.files == report.files and again.preference_pairs_added == 0  # deduped by interaction
    assert store.scalar("SELECT COUNT(*) FROM preference_pairs") == 1
    assert (tmp_path / "ds2" / "sft_train.jsonl").read_text() == (tmp_path / "ds" / "sft_train.jsonl").read_text()

    for name in ("sft_train.jsonl", "sft_heldout.jsonl", "dpo.jsonl", "kto.jsonl"):
        loaded = load_dataset("json", data_files=str(tmp_path / "ds" / name), split="train")
        assert len(loaded) == report.files[name]


def test_with_evidence_runs_training_prompts_are_the_agents_excerpts(distilled: KnowledgeBase, tmp_path: Path) -> None:
    """FLYWHEEL_EVIDENCE_RUNS shows the model a few sentence runs instead of whole chunks; the adapter must
    train on exactly that view, and each answer must cite the excerpt that holds it."""
    from agent.grounding import support

    kb = distilled
    settings = kb.settings.model_copy(update={"evidence_runs": 2})
    report = build_datasets(settings, kb.store, kb, out_dir=tmp_path / "ev", teacher=OfflineTeacher())
    train = _read(tmp_path / "ev" / "sft_train.jsonl")
    assert report.sources["sft_train.jsonl"]["distilled"] >= 20
    pairs = {p["id"]: p for p in kb.store.query("SELECT * FROM qa_pairs")}
    chunks = kb.store.query("SELECT * FROM chunks")
    cut = whole = 0
    for example in (e for e in train if e["source"] == "distilled"):
        pair, answer = pairs[example["id"]], example["completion"][0]["content"]
        content = example["prompt"][1]["content"]
        bodies = [b.split("\n", 1)[1] for b in content.split("Question:")[0].removeprefix("Context:\n").split("\n\n[")]

        def flat(text: str) -> str:  # sentences are read without list bullets and line breaks
            return " ".join(re.sub(r"(?m)^\s*(?:[-*•]|\d{1,2}[.)])\s+", "", text).split())

        texts = [flat(c["text"]) for c in chunks]
        if all(flat(b) in texts for b in bodies) and len(bodies) > 2:
            whole += 1  # no run of these passages holds the answer: the whole passages are kept
            continue
        assert 1 <= len(bodies) <= 2
        # excerpts of real chunks (a table row travels with its header row: "header / row")
        foreign = [part for b in bodies for part in b.split(" / ") if not any(flat(part) in t for t in texts)]
        assert not foreign
        cut += any(flat(b) not in texts for b in bodies)
        n = int(answer.rsplit("[", 1)[1].rstrip("].")) if answer.rstrip(".").endswith("]") else None
        assert n is not None and support(pair["answer"], bodies[n - 1], pair["question"]) >= 0.6
    assert whole <= cut / 4
    assert cut >= 10  # most prompts really are cut down to sentence runs


# --- feedback rules, on the ingested handbook without distilled pairs ---------------------------------
def test_dpo_rejected_is_the_stored_draft_and_no_draft_makes_no_pair(kb_store, settings, tmp_path) -> None:
    kb, store = kb_store
    settings = _admin(settings)
    chunk = _paging_chunk(store)
    quoted = turn(store, chunk, draft="Within an hour, then it escalates [1].",
                  answer="The documents say: “Acknowledge a page within 15 minutes.” [1]", produced_by="quote")
    store.set_vote(quoted, ADMIN, -1, "button", correction=SUPPORTED)
    # Recorded with a prompt but no draft (the model's text was never kept): nothing of its own to reject.
    no_draft = turn(store, chunk, draft=None, answer=NOT_FOUND, produced_by="refusal")
    store.set_vote(no_draft, ADMIN, -1, "button", correction=SUPPORTED)
    rewritten = turn(store, chunk, question="Within how many minutes must I acknowledge a page?",
                     draft="Pages are optional [1].", answer="Pages are optional [1].")
    store.set_vote(rewritten, "U7", -1, "reaction")  # no correction: the teacher rewrites against the draft

    build_datasets(settings, store, kb, out_dir=tmp_path / "ds", teacher=OfflineTeacher())
    dpo = {r["interaction_id"]: r for r in store.query("SELECT * FROM preference_pairs")}
    rows = _read(tmp_path / "ds" / "dpo.jsonl")
    rejected = sorted(r["rejected"][0]["content"] for r in rows)
    assert rejected == ["Pages are optional [1].", "Within an hour, then it escalates [1]."]
    assert set(dpo) == {quoted, rewritten}  # the draft-less interaction made no pair, not even a rewrite
    assert dpo[quoted]["rejected"] == store.interaction(quoted)["draft"] and dpo[quoted]["source"] == "correction"
    assert dpo[rewritten]["source"] == "teacher_rewrite" and "15 minutes" in dpo[rewritten]["chosen"]
    # The draft-less correction is still a supported SFT example.
    fixes = [r for r in _read(tmp_path / "ds" / "sft_train.jsonl") if r["source"] == "correction"]
    assert sorted(r["id"] for r in fixes) == sorted([f"{quoted}-fix", f"{no_draft}-fix"])


def test_corrections_count_only_from_allowed_users_and_when_supported(kb_store, settings, tmp_path) -> None:
    kb, store = kb_store
    chunk = _paging_chunk(store)
    by_user = turn(store, chunk, draft="Within an hour [1].", answer="Within an hour [1].")
    store.set_vote(by_user, "U1", -1, "button", correction=SUPPORTED)
    unsupported = turn(store, chunk, draft="Within an hour [1].", answer="Within an hour [1].")
    store.set_vote(unsupported, ADMIN, -1, "button", correction="Acknowledge a page within 90 minutes.")

    def corrections(s: Settings, name: str) -> tuple[list[str], list[str], dict[str, int]]:
        report = build_datasets(s, store, kb, out_dir=tmp_path / name)  # no teacher: corrections only
        sft = [r["id"] for r in _read(tmp_path / name / "sft_train.jsonl") if r["source"] == "correction"]
        dpo = [r["chosen"][0]["content"] for r in _read(tmp_path / name / "dpo.jsonl")]
        return sft, dpo, report.corrections

    # Default: admins only. U1's correction is ignored, the admin's unsupported one is no training data.
    assert corrections(_admin(settings), "admins") == ([], [], {"not_allowed": 1, "unsupported": 1})
    assert corrections(_admin(settings, corrections_from="everyone"), "everyone") == (
        [f"{by_user}-fix"], ["Acknowledge a page within 15 minutes [1]."], {"used": 1, "unsupported": 1})
    assert corrections(_admin(settings, corrections_from="U1, U2"), "listed")[0] == [f"{by_user}-fix"]
    # Narrowing the setting later drops the stored correction pair again.
    assert corrections(_admin(settings), "again")[:2] == ([], [])
    assert correction_allowed(_admin(settings, corrections_from="admins,U9"), ADMIN)
    assert not correction_allowed(settings, "")


def test_eval_interactions_never_reach_datasets_or_status(kb_store, settings, tmp_path) -> None:
    from agent.status import collect_status

    kb, store = kb_store
    settings = _admin(settings, corrections_from="everyone", kto_min_rows=1)
    chunk = _paging_chunk(store)
    for surface in ("eval", "slack"):
        up = turn(store, chunk, draft=f"{surface} up [1].", answer=f"{surface} up [1].", surface=surface)
        store.set_vote(up, "U1", 1, "button")
        down = turn(store, chunk, draft=f"{surface} down [1].", answer=f"{surface} down [1].", surface=surface)
        store.set_vote(down, ADMIN, -1, "button", correction=SUPPORTED)
    report = build_datasets(settings, store, kb, out_dir=tmp_path / "ds", teacher=OfflineTeacher())
    text = "".join((tmp_path / "ds" / name).read_text() for name in report.files)
    assert "slack up" in text and "slack down" in text  # the same rows on another surface are used
    assert "eval up" not in text and "eval down" not in text
    assert {r["interaction_id"] for r in store.query("SELECT interaction_id FROM preference_pairs")} == {down}
    status = collect_status(settings, store)
    assert status["interactions"] == 2 and status["answers_this_week"] == 2


# --- corrections as they arrive: training data, ignored, or a team answer ----------------------------
def test_unsupported_admin_correction_becomes_a_team_answer_that_retrieval_finds(kb_store, settings,
                                                                                  monkeypatch, tmp_path) -> None:
    from agent.graph import Agent
    from bot.feedback import team_answers_path, use_correction

    kb, store = kb_store
    settings = _admin(settings)
    chunk = _paging_chunk(store)
    wifi = turn(store, None, question=WIFI, draft=None, answer=NOT_FOUND, produced_by="refusal")
    ack = turn(store, chunk, draft="Within an hour [1].", answer="Within an hour [1].")
    agent = Agent(settings, store, kb)
    assert agent.retriever.search(WIFI).hits[0].source != "team-answers.md"

    assert use_correction(settings, store, kb, store.interaction(wifi), "U1", UNSUPPORTED) == "ignored"
    assert not team_answers_path(settings).exists()
    assert use_correction(settings, store, kb, store.interaction(ack), ADMIN, SUPPORTED) == "training"
    assert use_correction(settings, store, kb, store.interaction(wifi), ADMIN, UNSUPPORTED) == "team_answer"

    text = team_answers_path(settings).read_text()
    assert f"## {WIFI}\n\n{UNSUPPORTED}\n" in text
    assert f"Slack user {ADMIN} in channel C0001 (thread 1700000000.000100)" in text
    top = agent.retriever.search(WIFI).hits[0]
    assert top.source == "team-answers.md" and top.heading == f"Team answers > {WIFI}"
    assert UNSUPPORTED in top.text
    uses = [json.loads(r["detail"])["use"] for r in store.query(
        "SELECT detail FROM audit_log WHERE action = 'feedback.correction' ORDER BY id")]
    assert uses == ["ignored", "training", "team_answer"]

    # The same question corrected again replaces its section; a second question adds one.
    assert use_correction(settings, store, kb, store.interaction(wifi), ADMIN, UNSUPPORTED) == "in_documents"
    use_correction(settings, store, kb, store.interaction(wifi), ADMIN, "Ask the front desk; it changes weekly.")
    other = turn(store, None, question="Who waters the plants in the Lisbon office?", draft=None, answer=NOT_FOUND,
                 produced_by="refusal")
    use_correction(settings, store, kb, store.interaction(other), ADMIN, "Ines Duarte waters them on Thursdays.")
    text = team_answers_path(settings).read_text()
    assert text.count("## ") == 2 and "front desk" in text and UNSUPPORTED not in text
    assert store.scalar("SELECT COUNT(*) FROM documents WHERE name = 'team-answers.md'") == 1

    # A failing ingest is reported, never raised; the correction itself lives on in the feedback table.
    store.set_vote(other, ADMIN, -1, "button", correction="Nobody; they are plastic.")
    monkeypatch.setattr(kb, "ingest", lambda paths: (_ for _ in ()).throw(OSError("disk full")))
    assert use_correction(settings, store, kb, store.interaction(other), ADMIN,
                          "Nobody; they are plastic.") == "team_answer_failed"
    assert store.vote_of(other, ADMIN)["correction"] == "Nobody; they are plastic."
    assert json.loads(store.query("SELECT detail FROM audit_log ORDER BY id DESC LIMIT 1")[0]["detail"])["error"] \
        == "disk full"


# --- the stages that train on these files, on the tiny model -------------------------------------------
def test_sft_logs_heldout_loss_and_kto_trains_on_voted_drafts(kb_store, settings, tmp_path) -> None:
    """Votes on drafts → kto.jsonl → preference_stages says "kto" → SFT (with eval_loss from the held-out
    file) → KTO continuing the SFT adapter, each in its own process, registered as candidates."""
    from training.train import preference_stages, train_adapter

    kb, store = kb_store
    settings = _admin(settings, kto_min_rows=6, train_threads=1, batch_size=2)
    chunk = _paging_chunk(store)
    for i in range(4):
        up = turn(store, chunk, draft=f"Acknowledge within 15 minutes, case {i} [1].",
                  answer=f"Acknowledge within 15 minutes, case {i} [1].")
        store.set_vote(up, "U1", 1, "reaction")
        down = turn(store, chunk, draft=f"Pages can wait {i} hours [1].", answer=f"Pages can wait {i} hours [1].")
        store.set_vote(down, "U2", -1, "reaction")
    report = build_datasets(settings, store, kb, out_dir=tmp_path / "ds")
    folder = Path(report.out_dir)
    kto = _read(folder / "kto.jsonl")
    assert sorted(k["label"] for k in kto) == [False] * 4 + [True] * 4
    assert preference_stages(settings, folder) == ["kto"]  # 8 rows, both labels; no DPO pairs
    assert preference_stages(settings.model_copy(update={"kto_min_rows": 9}), folder) == []
    # A held-out file, as distillation writes it, becomes SFT's eval_dataset.
    (folder / "sft_heldout.jsonl").write_text((folder / "sft_train.jsonl").read_text())

    sft = train_adapter(settings, store, folder, run_id="r-sft", max_steps=2)
    losses = _read(Path(sft.path) / "losses.jsonl")
    assert any("eval_loss" in row for row in losses) and any("loss" in row for row in losses)
    assert sft.losses[-1]["step"] == 2 and sft.losses[-1]["eval_loss"] > 0  # the final adapter was scored
    run = json.loads((Path(sft.path) / "RUN.json").read_text())
    assert run["eval_file"] == str(folder / "sft_heldout.jsonl")

    record = train_adapter(settings, store, folder, run_id="r-kto", method="kto", max_steps=2,
                           init_adapter=sft.path)
    assert record.version == "v0002" and record.status == "candidate" and record.config["method"] == "kto"
    assert record.config["init_adapter"] == sft.path and record.data_counts["kto"] == 8
    assert [row["step"] for row in record.losses] == [1, 2]
    assert all(row["loss"] == row["loss"] for row in record.losses)  # no NaN
    assert not (Path(record.path) / "ref").exists()  # trl's frozen reference copy is not served
    from safetensors.torch import load_file

    before, after = (load_file(str(Path(r.path) / "adapter_model.safetensors")) for r in (sft, record))
    assert before.keys() == after.keys()
    assert any((after[k] - before[k]).abs().max().item() > 0 for k in before)  # KTO moved the SFT adapter
