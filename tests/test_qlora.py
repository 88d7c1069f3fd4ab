"""QLoRA (FLYWHEEL_QUANTIZE=nf4): 4-bit training in the training subprocess on the tiny Llama, the adapter
served on the float base, the CPU repacking trap guarded, CUDA (skipped without a GPU), and the refusals
of unsupported combinations before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.config import Settings
from tests.test_training import _example, _write_jsonl
from training import quantize as quantize_module
from training.quantize import quantize_problem
from training.train import TrainingError, train_adapter


def _bitsandbytes_skip_reason() -> str | None:
    """Why 4-bit can't run on this machine (None when it can): the extra missing or not importing."""
    problem = quantize_problem("nf4")
    if problem:
        return problem
    try:
        quantize_module.import_bitsandbytes("nf4")
    except RuntimeError as exc:
        return str(exc)
    return None


needs_bitsandbytes = pytest.mark.skipif(_bitsandbytes_skip_reason() is not None,
                                        reason=f"4-bit unavailable here: {_bitsandbytes_skip_reason()}")


@pytest.fixture
def same_rows_dataset(tmp_path: Path) -> Path:
    """The same four examples over and over: every step sees the same batch, so the loss must fall."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    _write_jsonl(folder / "sft_train.jsonl", [_example(i % 4) for i in range(16)])
    return folder


@pytest.fixture
def nf4_settings(settings: Settings) -> Settings:
    # One thread (the tests share two cores); a high rate so a few steps of a random tiny model show a trend.
    # LoRA on the top half (the default): the frozen 4-bit layer below feeds training/prefix_cache.py.
    return settings.model_copy(update={"train_threads": 1, "batch_size": 4, "quantize": "nf4",
                                       "learning_rate": 1e-2})


# --- training ---------------------------------------------------------------------------------------
@needs_bitsandbytes
def test_nf4_training_in_the_subprocess_lowers_the_loss_and_the_adapter_serves_on_the_float_base(
        nf4_settings, store, same_rows_dataset):
    import torch

    from agent.generation import TransformersGenerator
    from agent.models import load_causal_lm

    events: list[dict] = []
    record = train_adapter(nf4_settings, store, same_rows_dataset, max_steps=6, on_event=events.append)
    config_event = next(e for e in events if e["event"] == "config")
    assert config_event["quantized"] is True and config_event["device"] == "cpu"
    folder = Path(record.path)
    summary = json.loads((folder / "flywheel.json").read_text())
    assert summary["quantized"] is True and summary["config"]["quantize"] == "nf4"
    assert json.loads((folder / "RUN.json").read_text())["quantize"] == "nf4"
    losses = [row["loss"] for row in record.losses if "loss" in row]
    assert len(losses) == 6 and all(loss == loss for loss in losses)  # six finite steps
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses  # it learns

    # The adapter holds plain float LoRA tensors (nothing 4-bit) and loads on the float serving base.
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(key).dtype for key in weights.keys()}
        assert dtypes == {torch.float32} and all("lora_" in key for key in weights.keys())

    generator = TransformersGenerator(nf4_settings.model_copy(update={"adapter": str(folder), "max_new_tokens": 8}))
    assert generator.adapter == folder.name
    assert all(p.dtype == torch.float32 for p in generator.model.parameters())  # serving stays fp32
    base, tokenizer = load_causal_lm(nf4_settings.model)
    ids = tokenizer(_example(1)["completion"][0]["content"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (generator.model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item() > 1e-4
    prompt = _example(1)["prompt"]
    text = generator.generate(prompt)
    assert isinstance(text, str)
    streamed = "".join(generator.stream(prompt))
    assert streamed == text  # greedy: the same answer either way


@needs_bitsandbytes
def test_4bit_lora_gradients_match_the_dequantized_float_model_even_after_an_evaluation(tiny_model_dir):
    """The CPU trap: bitsandbytes repacks a 4-bit weight for inference on its first no-grad eval forward and
    the backward through that layout is wrong. The training loader switches the repacking off, so the
    gradients after an evaluation (as the trainer's periodic held-out loss does) are the float model's."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.sft import load_base

    quantized, is_4bit = load_base(str(tiny_model_dir), "nf4")
    assert is_4bit
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    modules = dict(reference.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, Linear4bit):  # the float model with exactly the 4-bit model's weights
            modules[name].weight.data = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(3))

    def lora_grads(model) -> dict[str, torch.Tensor]:
        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(1)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      init_lora_weights=False))
        peft_model.eval()
        with torch.no_grad():  # an evaluation first, as the trainer's held-out loss does mid-training
            peft_model(input_ids=ids)
        peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}

    got, want = lora_grads(quantized), lora_grads(reference)
    assert got.keys() == want.keys() and len(got) == 2 * 7 * 2  # A and B, 7 linear layers, 2 decoder layers
    for name in want:
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 1e-3 * max(scale, 1e-6), name


def test_cuda_nf4_training(settings, store, tmp_path):
    """4-bit training on a GPU (bf16 compute): skipped without CUDA or bitsandbytes."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = _bitsandbytes_skip_reason()
    if reason:
        pytest.skip(f"4-bit unavailable here: {reason}")
    folder = tmp_path / "dataset"
    folder.mkdir()
    _write_jsonl(folder / "sft_train.jsonl", [_example(i) for i in range(8)])
    events: list[dict] = []
    record = train_adapter(settings.model_copy(update={"quantize": "nf4"}), store, folder, max_steps=2,
                           on_event=events.append)
    config_event = next(e for e in events if e["event"] == "config")
    assert config_event["quantized"] is True and config_event["device"] == "cuda"
    assert json.loads((Path(record.path) / "flywheel.json").read_text())["final_loss"] > 0


# --- refusals, before any work ----------------------------------------------------------------------
def _no_work_done(settings: Settings, store) -> None:
    assert not any(settings.adapters_dir.iterdir())  # no run folder, no RUN.json, no process
    assert store.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'train.start'") == 0


def test_nf4_without_bitsandbytes_says_to_install_the_extra(settings, store, same_rows_dataset, monkeypatch):
    monkeypatch.setattr(quantize_module, "bitsandbytes_version", lambda: None)
    with pytest.raises(TrainingError, match=r"needs bitsandbytes.*pip install 'flywheel\[qlora\]'"):
        train_adapter(settings.model_copy(update={"quantize": "nf4"}), store, same_rows_dataset, max_steps=1)
    _no_work_done(settings, store)


def test_nf4_with_too_old_a_bitsandbytes_is_refused(settings, store, same_rows_dataset, monkeypatch):
    monkeypatch.setattr(quantize_module, "bitsandbytes_version", lambda: "0.45.5")
    with pytest.raises(TrainingError, match=r"bitsandbytes >= 0\.48.*0\.45\.5 is installed"):
        train_adapter(settings.model_copy(update={"quantize": "nf4"}), store, same_rows_dataset, max_steps=1)
    _no_work_done(settings, store)


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_nf4_with_a_remote_backend_is_refused(settings, store, same_rows_dataset, backend):
    with pytest.raises(TrainingError, match=f"FLYWHEEL_BACKEND={backend}.*FLYWHEEL_QUANTIZE=none"):
        train_adapter(settings.model_copy(update={"quantize": "nf4", "backend": backend}), store,
                      same_rows_dataset, max_steps=1)
    _no_work_done(settings, store)


def test_the_setting_is_explicit_and_validated(monkeypatch, tmp_path):
    from pydantic import ValidationError

    assert Settings(home=tmp_path).quantize == "none"  # never switched on by the hardware
    monkeypatch.setenv("FLYWHEEL_QUANTIZE", "nf4")
    assert Settings(home=tmp_path).quantize == "nf4"
    monkeypatch.setenv("FLYWHEEL_QUANTIZE", "int8")
    with pytest.raises(ValidationError, match="quantize"):
        Settings(home=tmp_path)
    assert quantize_problem("int8") == "FLYWHEEL_QUANTIZE must be one of none, nf4, not 'int8'"
    assert quantize_problem("none", "openai") is None  # the float base trains whatever the backend


def test_an_unknown_quantize_in_run_json_fails_in_the_process_before_loading(tiny_model_dir, tmp_path):
    from training.sft import load_base

    with pytest.raises(RuntimeError, match="must be one of none, nf4, not 'int4'"):
        load_base(str(tiny_model_dir), "int4")


def test_a_cycle_with_an_unsupported_quantize_is_refused_before_it_starts(settings, store, monkeypatch):
    from training.cycle import run_cycle

    monkeypatch.setattr(quantize_module, "bitsandbytes_version", lambda: None)
    said: list[str] = []
    result = run_cycle(settings.model_copy(update={"quantize": "nf4"}), store, on_progress=said.append)
    assert result.status == "failed" and result.run_id is None and result.stage == "settings"
    assert "pip install 'flywheel[qlora]'" in result.error and said == [result.summary()]
    assert store.scalar("SELECT COUNT(*) FROM training_runs") == 0  # nothing ingested, distilled or trained


def test_the_cycle_budget_measures_a_4bit_recipe_afresh(settings):
    from training.budget import recipe_key

    float_key = recipe_key(settings)
    assert "quantize" not in float_key  # keys recorded before the setting existed still match
    assert recipe_key(settings.model_copy(update={"quantize": "nf4"})) == {**float_key, "quantize": "nf4"}
