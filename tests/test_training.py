"""Training, registry, eval gate and hot swap, on the tiny random model (seconds per test, most of
it the training subprocess importing torch/transformers/trl)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from storage.samples import sample_questions, unanswerable_questions
from training import registry
from training.gate import compare, gate_item, paired_bootstrap, run_gate, sign_test
from training.registry import RegistryError
from training.sft import CRASH_ENV, RunConfig, build_trainer
from training.train import TrainingError, train_adapter


def _example(i: int) -> dict:
    prompt = [
        {"role": "system", "content": "You are Flywheel. Answer from the context and cite like [1]."},
        {"role": "user", "content": f"Context:\n[1] doc.md — Items\nThe value of item {i} is {i * 7}.\n\n"
                                    f"Question: What is the value of item {i}?"},
    ]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": f"Item {i} is {i * 7} [1]."}],
            "id": f"q{i}", "source": "doc.md"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    _write_jsonl(folder / "sft_train.jsonl", [_example(i) for i in range(12)])
    _write_jsonl(folder / "sft_heldout.jsonl", [_example(i) for i in range(12, 15)])
    return folder


@pytest.fixture
def train_settings(settings):
    # One thread: the tests share two cores with other test runs; oversubscribed OpenMP crawls.
    return settings.model_copy(update={"train_threads": 1, "batch_size": 4})


def _logits(model, tokenizer):
    import torch

    ids = tokenizer("Item 3 is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def make_adapter(base_dir: Path, out: Path, seed: int, scale: float) -> Path:
    """A LoRA adapter with random (non-zero) B matrices: changes the model's outputs by `scale`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    peft_model.save_pretrained(out)
    return out


# --- the SFT recipe ---------------------------------------------------------------------------
def test_sft_subprocess_registers_a_candidate_that_changes_logits(train_settings, store, dataset_dir):
    from peft import PeftModel

    from agent.models import load_causal_lm

    events: list[dict] = []
    record = train_adapter(train_settings, store, dataset_dir, max_steps=3, on_event=events.append)
    assert record.version == "v0001" and record.status == "candidate"
    assert record.data_counts["sft_train"] == 12 and record.data_counts["sft_heldout"] == 3
    assert [row["step"] for row in record.losses] == [1, 2, 3]
    assert record.config["lora_r"] == 16 and record.config["tokens_per_second"] > 0
    assert any(e["event"] == "step" for e in events) and events[-1]["event"] == "done"

    folder = Path(record.path)
    assert folder == train_settings.adapters_dir / "v0001"
    summary = json.loads((folder / "flywheel.json").read_text())
    assert summary["base_model"] == str(train_settings.model) and summary["final_loss"] > 0
    assert not (folder / "checkpoints").exists()  # removed after success
    assert (folder / "RUN.json").is_file() and (folder / "losses.jsonl").is_file()
    # FLYWHEEL_LORA_LAYERS=0.5: only the top half of the decoder layers carry LoRA weights.
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        adapted = {int(key.split(".layers.")[1].split(".")[0]) for key in weights.keys()}
    assert adapted == {1}
    # The chat template travels with the adapter (a mismatch after LoRA = rambling output).
    from transformers import AutoTokenizer

    assert "<|im_start|>" in (AutoTokenizer.from_pretrained(folder).chat_template or "")

    base, tokenizer = load_causal_lm(train_settings.model)
    before = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(folder))
    after = _logits(tuned, tokenizer)
    assert (after - before).abs().max().item() > 1e-6
    assert store.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'adapter.register'") == 1


def test_dpo_continues_the_sft_adapter_and_prefers_chosen(train_settings, store, dataset_dir):
    """The cycle's second stage: DPO on 👎 pairs (rejected answer vs the correction), starting from
    the SFT adapter, in its own process, registered as a new candidate with its losses."""
    rows = []
    for i in range(8):
        example = _example(i)
        rows.append({"prompt": example["prompt"], "chosen": example["completion"],
                     "rejected": [{"role": "assistant", "content": f"Item {i} is {i * 7 + 1}."}], "id": f"p{i}"})
    _write_jsonl(dataset_dir / "dpo.jsonl", rows)
    sft = train_adapter(train_settings, store, dataset_dir, run_id="r-sft", max_steps=2)
    dpo = train_adapter(train_settings, store, dataset_dir, run_id="r-dpo", method="dpo", max_steps=2,
                        init_adapter=sft.path)
    assert (sft.version, dpo.version) == ("v0001", "v0002") and dpo.status == "candidate"
    assert dpo.config["method"] == "dpo" and dpo.config["init_adapter"] == sft.path
    assert dpo.data_counts["dpo"] == 8 and [row["step"] for row in dpo.losses] == [1, 2]
    assert all(row["loss"] == row["loss"] for row in dpo.losses)  # no NaN
    assert (Path(dpo.path) / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("packing", "packed_forward"), [(True, False), (False, True), (False, False)])
def test_only_completion_tokens_carry_labels(tiny_model_dir, dataset_dir, tmp_path, packing, packed_forward):
    import torch

    cfg = RunConfig(model=str(tiny_model_dir), train_file=str(dataset_dir / "sft_train.jsonl"),
                    output_dir=str(tmp_path / "out"), batch_size=3, packing=packing, threads=1,
                    packed_forward=packed_forward)
    trainer, _, _ = build_trainer(cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = trainer.processing_class
    labels, ids = batch["labels"], batch["input_ids"]
    trained = [tokenizer.decode(ids[row][labels[row] != -100]) for row in range(ids.size(0))]
    text = " ".join(trained)
    examples = sum(tokenizer.decode(row).count("<|im_start|>user") for row in ids)  # packing merges rows
    # trl's packing and our packed CPU forward: the step's rows in one padding-free row; else one unpadded
    # example per forward.
    assert examples > 1 if packing or packed_forward else examples == 1
    assert text.count("Item ") == examples  # one completion per example, nothing else
    assert "Context" not in text and "Question" not in text and "system" not in text
    assert text.count("<|im_end|>") == examples  # the end-of-turn token is trained: the model learns to stop
    assert all((labels[row][labels[row] != -100] == ids[row][labels[row] != -100]).all() for row in range(ids.size(0)))

    # Our LM-head-on-trained-positions loss equals the model's plain loss over the same labels.
    model = trainer.model
    model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        plain = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids",
                                                                "labels")}).loss
    assert torch.allclose(ours, plain, atol=1e-4), (ours, plain)


def test_crash_after_checkpoint_then_resume(train_settings, store, dataset_dir):
    with pytest.raises(TrainingError, match="SIGKILL") as failure:
        train_adapter(train_settings, store, dataset_dir, run_id="run-a", max_steps=3, env={CRASH_ENV: "1"})
    assert "run_id='run-a'" in str(failure.value)
    assert registry.list_adapters(store) == []  # a failed run registers nothing
    folder = train_settings.adapters_dir / "v0001"
    assert (folder / "checkpoints" / "checkpoint-1").is_dir()

    record = train_adapter(train_settings, store, dataset_dir, run_id="run-a", max_steps=3)
    assert record.version == "v0001"  # same run, same folder
    summary = json.loads((folder / "flywheel.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1")
    assert summary["steps_this_session"] == 2 and summary["global_step"] == 3  # not from step 0
    assert [row["step"] for row in record.losses] == [1, 2, 3]


def test_failing_run_raises_with_log_tail_and_registers_nothing(train_settings, store, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    _write_jsonl(broken / "sft_train.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])  # no completion
    with pytest.raises(TrainingError, match="exited with code") as failure:
        train_adapter(train_settings, store, broken, max_steps=2)
    assert "missing columns" in str(failure.value)
    assert registry.list_adapters(store) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="no training data"):
        train_adapter(train_settings, store, empty)


# --- registry ---------------------------------------------------------------------------------
def _fake(settings, store, version: str) -> None:
    folder = settings.adapters_dir / version
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    registry.register(settings, store, version=version, path=folder, base_model="tiny", losses=[{"step": 1, "loss": 2.0}])


def test_registry_promote_rollback_and_pointer(settings, store):
    for version in ("v0001", "v0002"):
        _fake(settings, store, version)
    assert registry.next_version(settings, store) == "v0003"
    assert registry.read_pointer(settings) is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(settings, store, "admin")

    registry.promote(settings, store, "v0001", "admin")
    assert registry.read_pointer(settings) == "v0001"
    registry.promote(settings, store, "v0002", "admin")
    statuses = {a.version: a.status for a in registry.list_adapters(store)}
    assert statuses == {"v0001": "retired", "v0002": "promoted"}
    assert store.promoted_adapter()["version"] == "v0002" and registry.read_pointer(settings) == "v0002"

    back = registry.rollback(settings, store, "admin")
    assert back.version == "v0001" and back.status == "promoted"
    assert registry.get_adapter(store, "v0002").status == "rejected"
    assert registry.read_pointer(settings) == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(settings, store, "admin")
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote(settings, store, "v0002", "admin")
    actions = [r["action"] for r in store.query("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("adapter.promote") == 2 and "adapter.rollback" in actions
    assert not list(settings.adapters_dir.glob(".CURRENT-*"))  # no temp files left behind


def test_promotion_is_one_transaction(settings, store):
    for version in ("v0001", "v0002"):
        _fake(settings, store, version)
    registry.promote(settings, store, "v0001", "admin")
    # Make the second UPDATE of a promotion fail: the first (retiring v0001) must be undone too.
    store.execute("CREATE TRIGGER boom BEFORE UPDATE OF status ON adapters "
                     "WHEN NEW.status = 'promoted' AND NEW.version = 'v0002' BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(Exception, match="boom"):
        registry.promote(settings, store, "v0002", "admin")
    assert {a.version: a.status for a in registry.list_adapters(store)} == {"v0001": "promoted", "v0002": "candidate"}
    assert registry.read_pointer(settings) == "v0001"
    with pytest.raises(RegistryError, match="no adapter"):
        registry.promote(settings, store, "v0042", "admin")


# --- eval gate ---------------------------------------------------------------------------------
def _report(correct: list[int], label: str = "x", unanswerable: int = 0, qa: str = "h", **final: float) -> dict:
    """A gate report with per-item accuracy `correct` (1/0 per answerable item) and final-view guards."""
    items = [{"id": f"q{i}", "origin": "qa", "answerable": True, "accuracy": c} for i, c in enumerate(correct)]
    items += [{"id": f"u{i}", "origin": "qa", "answerable": False, "accuracy": None} for i in range(unanswerable)]
    view = {"accuracy": round(sum(correct) / len(correct), 4), "false_refusal": 0.0, "groundedness": 1.0,
            "citation_validity": 1.0, **({"correct_refusal": 1.0} if unanswerable else {}), **final}
    return {"n": len(items), "answerable": len(correct), "unanswerable": unanswerable, "primary": view["accuracy"],
            "final": view, "draft": {}, "items": items, "label": label, "qa_hash": qa}


def test_sign_test_and_bootstrap_are_exact_and_repeatable():
    assert sign_test(1, 0) == 1.0 and sign_test(2, 0) == 0.5 and sign_test(0, 0) == 1.0
    assert sign_test(6, 0) == sign_test(0, 6) == 2 / 64  # the smallest all-one-way split below 0.05
    assert sign_test(5, 0) == 2 / 32 and sign_test(10, 10) == 1.0
    assert sign_test(7, 1) == pytest.approx(2 * (1 + 8) / 256)
    diffs = [1] * 10 + [0] * 30
    low, high = paired_bootstrap(diffs)
    assert paired_bootstrap(diffs) == (low, high)  # fixed seed: the same data, the same decision
    assert 0 < low < 0.25 < high < 0.5
    assert paired_bootstrap([0] * 40) == (0.0, 0.0) and paired_bootstrap([]) == (0.0, 0.0)


def test_compare_promotes_only_a_significant_gain_without_guard_regressions():
    base = _report([1] * 20 + [0] * 20, "base", unanswerable=4)
    clear = compare(_report([1] * 30 + [0] * 10, "v0002", unanswerable=4), None, base, 0.02, 0.02, min_items=40)
    assert clear.promote and (clear.better, clear.worse, clear.paired, clear.n_items) == (10, 0, 40, 44)
    assert clear.delta == 0.25 and clear.ci_low > 0 and clear.p_value == pytest.approx(2 / 1024)
    assert "Δ +0.250" in clear.reasons[0] and "95% CI [" in clear.reasons[0] and "p = 0.00195" in clear.reasons[0]

    barely = compare(_report([1] * 22 + [0] * 18, unanswerable=4), None, base, 0.02, 0.02)
    assert not barely.promote and barely.delta == 0.05 and "not a significant gain" in barely.reasons[0]
    # The same mean gain with items lost on the way is not significant either: 10 better, 4 worse.
    mixed = compare(_report([1] * 16 + [0] * 4 + [1] * 10 + [0] * 10, unanswerable=4), None, base, 0.02, 0.02)
    assert (mixed.better, mixed.worse) == (10, 4) and mixed.p_value > 0.05 and not mixed.promote
    small = compare(_report([1] * 30 + [0] * 10, unanswerable=4), None, base, 0.30, 0.02)
    assert not small.promote and "below the minimum 0.300" in small.reasons[0]  # promote_margin: min effect size

    current = _report([1] * 30 + [0] * 10, "v0001", unanswerable=4)
    vs_current = compare(_report([1] * 30 + [0] * 10, "v0002", unanswerable=4), current, base, 0.02, 0.02)
    assert not vs_current.promote and vs_current.reference == "v0001" and vs_current.delta == 0.0  # beats base only

    guarded = [compare(_report([1] * 40, unanswerable=4, **{guard: value}), None, base, 0.02, 0.02)
               for guard, value in (("groundedness", 0.9), ("citation_validity", 0.97), ("false_refusal", 0.05),
                                    ("correct_refusal", 0.75))]
    for decision, guard in zip(guarded, ("groundedness", "citation_validity", "false_refusal", "correct_refusal")):
        assert not decision.promote and decision.p_value < 0.001, decision.reasons
        assert any(r.startswith(f"guard {guard} (final) got worse") for r in decision.reasons)
    assert compare(_report([1] * 40, unanswerable=4, groundedness=0.99), None, base, 0.02, 0.02).promote  # tolerated

    few = compare(_report([1] * 30 + [0] * 10, unanswerable=4), None, base, 0.02, 0.02, min_items=50)
    assert not few.promote and few.reasons[0].startswith("only 44 held-out items; need 50")
    forced = compare(_report([1] * 30 + [0] * 10, unanswerable=4), None, base, 0.02, 0.02, min_items=50, force=True)
    assert forced.promote and forced.forced
    with pytest.raises(ValueError, match="different questions"):
        compare(_report([1] * 40, qa="other"), None, base, 0.02, 0.02)
    assert not compare(_report([1] * 40), None, None, 0.02, 0.02).promote  # nothing to compare with: no


def test_one_scoring_module_defines_accuracy_refusal_and_citation_validity_per_answer():
    from agent.evaluate import score_item
    from agent.evaluate import summarize as eval_summary
    from agent.prompts import NOT_FOUND

    shown = [{"text": "Acknowledge a page within 15 minutes."}, {"text": "Escalation goes to the secondary."}]
    item = {"question": "How soon?", "must_include": ["15 minutes"], "answer": "Within 15 minutes."}

    def scores(answer: str, produced_by: str = "model", it: dict = item) -> dict:
        return score_item(it, {"answer": answer, "produced_by": produced_by, "grounded": produced_by != "refusal",
                               "citations": [], "retrieved": [], "passages": shown})

    assert scores("Within 15 minutes [1].")["citation_validity"] is True
    assert scores("Within 15 minutes.")["citation_validity"] is False  # a model that never cites scores 0
    assert scores("Within 15 minutes [3].")["citation_validity"] is False  # no passage 3 was shown
    assert scores("Within 15 minutes [1].")["accuracy"] and not scores("Within 20 minutes [1].")["accuracy"]
    refused = scores("I couldn't find this in the documents. Closest: 15 minutes", "refusal")
    assert refused["false_refusal"] and not refused["accuracy"]  # a refusal is never accurate
    reference_only = {"question": "Who?", "answer": "The secondary on-call is paged next."}
    assert scores("The secondary on-call is paged next [2].", it=reference_only)["accuracy"]  # token-F1 >= 0.5
    assert not scores("Nobody [2].", it=reference_only)["accuracy"]
    unanswerable = {"question": "Wifi password?", "unanswerable": True}
    assert scores("I couldn't find this in the documents.", "refusal", unanswerable) == {"correct_refusal": True}
    # The gate reads a distilled pair answered NOT_FOUND, or an item with no reference, as unanswerable.
    assert gate_item({"question": "Wifi?", "answer": NOT_FOUND})["unanswerable"]
    assert gate_item({"question": "Wifi?"})["unanswerable"] and "unanswerable" not in gate_item(reference_only)
    summary = eval_summary([{"scores": scores(a), "produced_by": "model", "latency_ms": 1.0}
                            for a in ("Within 15 minutes [1].", "Within 15 minutes.")])
    assert summary["citation_validity"] == 0.5 and summary["accuracy"] == 1.0


def test_gate_end_to_end_with_the_tiny_model_refuses_to_decide_on_four_items(settings, kb_store, tiny_model_dir):
    kb, store = kb_store
    folder = make_adapter(tiny_model_dir, settings.adapters_dir / "v0001", seed=1, scale=0.5)
    registry.register(settings, store, version="v0001", path=folder, base_model=str(tiny_model_dir))
    qa = sample_questions()[:3] + unanswerable_questions()[:1]
    decision, reports = run_gate(settings, store, kb, "v0001", qa)
    assert set(reports) == {"base", "candidate"}
    assert not decision.promote and decision.reasons[0].startswith("only 4 held-out items; need 40")
    record = registry.get_adapter(store, "v0001")
    assert record.status == "rejected"
    assert record.metrics["decision"]["promote"] is False and record.metrics["n"] == 4
    assert record.metrics["decision"]["paired"] == 3 and 0 <= record.metrics["decision"]["p_value"] <= 1
    assert record.metrics["compared"]["base"]["answerable"] == 3
    assert [i["accuracy"] is None for i in record.metrics["items"]] == [False, False, False, True]
    final, draft = record.metrics["final"], record.metrics["draft"]
    for key in ("accuracy", "f1", "groundedness", "citation_validity", "false_refusal", "correct_refusal"):
        assert 0.0 <= final[key] <= 1.0 and 0.0 <= draft[key] <= 1.0
    assert sum(final[f"produced_by_{p}"] for p in ("model", "quote", "refusal")) == pytest.approx(1.0)
    assert 0.0 <= draft["no_runaway"] <= 1.0  # the tiny model's generator has a tokenizer to count with
    assert (folder / "gate.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (folder / "eval_v0001.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["adapter"] in ("v0001", None) for r in rows)
    assert any(r["draft"] for r in rows)  # the model's own draft was scored
    assert {r["final_by"] for r in rows} <= {"model", "quote", "refusal"}
    assert store.scalar("SELECT COUNT(*) FROM interactions") == 0  # evaluation isn't recorded as usage


# --- hot swap ---------------------------------------------------------------------------------
def test_promotion_hot_swaps_between_answers_not_during_one(settings, kb_store, tiny_model_dir):
    kb, store = kb_store
    from agent.generation import TransformersGenerator
    from agent.graph import Agent

    for version, seed in (("v0001", 1), ("v0002", 2)):
        folder = make_adapter(tiny_model_dir, settings.adapters_dir / version, seed=seed, scale=0.3)
        registry.register(settings, store, version=version, path=folder, base_model=str(tiny_model_dir))
    registry.promote(settings, store, "v0001", "admin")
    settings = settings.model_copy(update={"max_new_tokens": 40})
    generator = TransformersGenerator(settings, store)
    assert generator.adapter == "v0001"
    agent = Agent(settings, store, kb, generator)
    question = sample_questions()[0]["question"]
    reference = agent.answer(question, "t-reference", record=False)
    assert reference.adapter == "v0001"

    def draft(thread_id: str) -> str:
        return agent.graph.get_state({"configurable": {"thread_id": thread_id}}).values["draft"]

    swapped = threading.Event()

    def swap() -> None:
        registry.promote(settings, store, "v0002", "admin")
        generator.refresh_adapter()  # waits for the model lock held by the answer in flight
        swapped.set()

    started: list[threading.Thread] = []

    def on_token(_: str) -> None:
        if not started:  # mid-decode: promote on another thread
            started.append(threading.Thread(target=swap))
            started[0].start()

    in_flight = agent.answer(question, "t-in-flight", record=False, on_token=on_token)
    started[0].join(timeout=60)
    assert swapped.is_set()
    assert draft("t-reference")  # the model ran
    assert in_flight.adapter == "v0001" and draft("t-in-flight") == draft("t-reference")  # old weights throughout
    after = agent.answer(question, record=False)
    assert after.adapter == "v0002" and generator.adapter == "v0002"  # no restart needed
