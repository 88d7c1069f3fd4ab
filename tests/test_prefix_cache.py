"""The frozen-prefix activation cache (training/prefix_cache.py) changes speed, never the training:
the same loss and the same LoRA gradients as the plain forward, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.sft import RunConfig, build_trainer, run


def _example(i: int) -> dict:
    prompt = [
        {"role": "system", "content": "You are Flywheel. Answer from the context and cite like [1]."},
        {"role": "user", "content": f"Context:\n[1] doc.md — Items\nThe value of item {i} is {i * 7}.\n\n"
                                    f"Question: What is the value of item {i}?"},
    ]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": f"Item {i} is {i * 7} [1]."}]}


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "sft_train.jsonl"
    path.write_text("".join(json.dumps(_example(i)) + "\n" for i in range(6)))
    return path


def _config(tiny_model_dir: Path, train_file: Path, out: Path, **overrides) -> RunConfig:
    values = dict(model=str(tiny_model_dir), train_file=str(train_file), output_dir=str(out), lora_layers=0.5,
                  lora_dropout=0.0, batch_size=2, threads=1, epochs=2, save_steps=1000,
                  packed_forward=False)  # this file tests the unpacked path (non-Llama models); see test_packed_forward
    return RunConfig(**{**values, **overrides})


def _loss_and_grads(trainer, batch) -> tuple[float, dict[str, object]]:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def test_cached_forward_gives_the_plain_loss_and_gradients(tiny_model_dir, train_file, tmp_path):
    import torch

    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "out"))
    cache = trainer.prefix_cache
    assert cache is not None and cache.first == 1  # 2 layers, LoRA on the top one: layer 0 is cached
    trainer.model.train()
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # LoRA starts with B = 0, which leaves every A without gradient: test both
            param.data.normal_(0, 0.05)
    batch = next(iter(trainer.get_train_dataloader()))

    trainer.prefix_cache = None
    plain_loss, plain_grads = _loss_and_grads(trainer, batch)
    trainer.prefix_cache = cache
    miss_loss, miss_grads = _loss_and_grads(trainer, batch)  # first sight: full forward, layer 1's input kept
    assert cache.stats()["misses"] == 1 and cache.stats()["examples"] == 1

    lower_calls = []
    handle = cache.layers[0].self_attn.register_forward_hook(lambda *a: lower_calls.append(1))
    try:
        hit_loss, hit_grads = _loss_and_grads(trainer, batch)  # from the cache: layer 0 does not run
    finally:
        handle.remove()
    assert cache.stats()["hits"] == 1 and lower_calls == []

    assert plain_grads and set(plain_grads) == set(hit_grads) == set(miss_grads)
    assert any(".layers.1." in n for n in plain_grads) and not any(".layers.0." in n for n in plain_grads)
    for loss in (miss_loss, hit_loss):
        assert loss == pytest.approx(plain_loss, rel=1e-6, abs=1e-6)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(hit_grads[name], grad, rtol=1e-5, atol=1e-7), name
        assert torch.allclose(miss_grads[name], grad, rtol=1e-5, atol=1e-7), name
    # The lower layers are whole again after a cached forward.
    assert "forward" not in vars(cache.layers[0])


def test_a_different_example_is_a_miss_not_a_wrong_hit(tiny_model_dir, train_file, tmp_path):
    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "out"))
    batches = iter(trainer.get_train_dataloader())
    first, second = next(batches), next(batches)
    assert not __import__("torch").equal(first["input_ids"], second["input_ids"]) or \
        first["input_ids"].shape != second["input_ids"].shape
    key = trainer.prefix_cache.key
    forward = lambda b: {k: v for k, v in b.items() if k != "labels"}  # noqa: E731
    assert key(forward(first)) != key(forward(second))
    assert key(forward(first)) == key(forward(dict(first)))
    assert key({**forward(first), "cu_seq_lens_q": first["input_ids"]}) is None  # unknown input: uncached


def test_no_cache_when_every_layer_is_adapted_or_it_is_switched_off(tiny_model_dir, train_file, tmp_path):
    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "a", lora_layers=1.0))
    assert trainer.prefix_cache is None
    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "b", activation_cache_mb=0))
    assert trainer.prefix_cache is None


def test_training_with_the_cache_follows_the_same_loss_curve(tiny_model_dir, train_file, tmp_path):
    """Two epochs (the second one from the cache), LoRA dropout on: the same losses step by step."""
    curves = {}
    for name, mb in (("cached", 2048), ("plain", 0)):
        out = tmp_path / name
        run(_config(tiny_model_dir, train_file, out, lora_dropout=0.05, activation_cache_mb=mb, epochs=3))
        curves[name] = [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    assert len(curves["cached"]) == 9  # 6 rows, batch 2, 3 epochs
    assert curves["cached"] == pytest.approx(curves["plain"], rel=1e-4)
