"""The packed CPU forward (training/packed_forward.py) changes speed, never the training: the same loss and
LoRA gradients as the model's own forward over the unpacked rows, the same loss curve over whole runs, and
a dropout mask with the configured rate — on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.sft import RunConfig, build_trainer, run


def _example(i: int) -> dict:
    prompt = [
        {"role": "system", "content": "You are Flywheel. Answer from the context and cite like [1]."},
        {"role": "user", "content": f"Context:\n[1] doc.md — Items\nThe value of item {i} is {i * 7}." + " More." * i
                                    + f"\n\nQuestion: What is the value of item {i}?"},
    ]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": f"Item {i} is {i * 7} [1]."}]}


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "sft_train.jsonl"
    path.write_text("".join(json.dumps(_example(i)) + "\n" for i in range(6)))
    return path


def _config(tiny_model_dir: Path, train_file: Path, out: Path, **overrides) -> RunConfig:
    values = dict(model=str(tiny_model_dir), train_file=str(train_file), output_dir=str(out), lora_layers=0.5,
                  lora_dropout=0.0, batch_size=3, threads=1, epochs=2, save_steps=1000)
    return RunConfig(**{**values, **overrides})


def _grads(model) -> dict:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _plain_loss(model, batch) -> object:
    """The model's own forward on each row of a padding-free batch (full logits, no cache), and trl's
    completion-only loss: summed over the step's trained tokens, divided by their count."""
    import torch
    import torch.nn.functional as F

    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    total, count = 0.0, 0
    for a, b in zip(starts, starts[1:]):
        ids, labels = batch["input_ids"][:, a:b], batch["labels"][:, a:b]
        logits = model(input_ids=ids, use_cache=False).logits.float()
        targets = labels[0, 1:]
        total = total + F.cross_entropy(logits[0, :-1], targets, ignore_index=-100, reduction="sum")
        count += int((targets != -100).sum())
    return total / torch.tensor(count)


def test_packed_loss_and_gradients_are_the_plain_forwards(tiny_model_dir, train_file, tmp_path):
    import torch

    trainer, _, info = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "out"))
    assert info["packed_forward"] and trainer.packed is not None and trainer.packed.first == 1
    model = trainer.model
    model.train()
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # LoRA starts with B = 0, which leaves every A without gradient: test both
            param.data.normal_(0, 0.05)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) == 3  # 3 rows, one packed row
    assert "attention_mask" not in batch

    plain = _plain_loss(model, batch)
    plain.backward()
    plain_grads = _grads(model)
    cache = trainer.packed.cache
    results = []
    for _ in range(2):  # first: the lower layer runs and is cached per row; then: from the cache
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((float(loss.detach()), _grads(model)))
        # the rows open with the same system prompt and context words: computed once, attended by all
        assert trainer.packed.shared >= 20
    assert cache.stats() == {"examples": 3, "bytes": cache.bytes, "hits": 3, "misses": 3}

    assert plain_grads and any(".layers.1." in n for n in plain_grads)
    assert not any(".layers.0." in n for n in plain_grads)
    for loss, grads in results:
        assert loss == pytest.approx(float(plain), rel=1e-5)
        assert set(grads) == set(plain_grads)
        for name, grad in plain_grads.items():
            assert grad.abs().sum() > 0, name
            assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_rows_do_not_see_each_other(tiny_model_dir, train_file, tmp_path):
    """Changing one row's tokens changes nothing in the other rows' logits."""
    import torch

    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "out", activation_cache_mb=0))
    trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, starts[1]: starts[2]] = 42  # the second row, labels untouched
    with torch.no_grad():
        _, before = trainer.packed.loss(dict(batch))
        _, after = trainer.packed.loss(changed)
    rows = (torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[0, 1:] != -100).nonzero().flatten()
    first, third = rows < starts[1], rows >= starts[2]
    assert torch.equal(before[first], after[first]) and torch.equal(before[third], after[third])
    assert not torch.equal(before[~first & ~third], after[~first & ~third])


def test_shared_prefix_is_what_every_row_opens_with_and_never_a_trained_position():
    import torch

    from training.packed_forward import shared_prefix

    rows = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 9, 9], [1, 2, 3, 4, 5, 8, 8, 8]]
    bounds, start = [], 0
    for row in rows:
        bounds.append((start, start + len(row)))
        start += len(row)
    ids = torch.tensor([t for row in rows for t in row])
    untrained = torch.zeros(len(ids), dtype=torch.bool)
    assert shared_prefix(ids, bounds, untrained, minimum=1) == 4  # the rows part at their 5th token
    assert shared_prefix(ids, bounds[::2], untrained, minimum=1) == 5
    assert shared_prefix(ids, bounds, untrained, minimum=5) == 0  # too short to be worth it
    assert shared_prefix(ids, bounds[:1], untrained, minimum=1) == 0  # one row: nothing to share
    trained = untrained.clone()
    trained[bounds[2][0] + 2] = True  # the third row's 3rd position is trained: it keeps its own logits
    assert shared_prefix(ids, bounds, trained, minimum=1) == 2
    short = torch.tensor([1, 2, 1, 2, 3])  # a row of two tokens keeps its last one
    assert shared_prefix(short, [(0, 2), (2, 5)], torch.zeros(5, dtype=torch.bool), minimum=1) == 1


def test_whole_runs_follow_the_plain_loss_curve(tiny_model_dir, train_file, tmp_path):
    """Three epochs of 2 steps: packed, cached and lean vs the model's own forward one row at a time."""
    curves = {}
    for name, packed in (("packed", True), ("plain", False)):
        out = tmp_path / name
        run(_config(tiny_model_dir, train_file, out, epochs=3, packed_forward=packed,
                    activation_cache_mb=2048 if packed else 0))
        curves[name] = [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    assert len(curves["packed"]) == 6  # 6 rows, batch 3, 3 epochs
    assert curves["packed"] == pytest.approx(curves["plain"], rel=1e-4)


def test_lean_lora_dropout_keeps_the_rate_and_the_expectation():
    import torch

    from training.packed_forward import keep_mask

    torch.manual_seed(1)
    mask, keep = keep_mask(torch.Size([400, 500]), 0.05)
    assert keep == pytest.approx(0.95, abs=1e-4)
    assert float(mask.float().mean()) == pytest.approx(keep, abs=0.002)  # 200k draws: ±0.0005 is one sd
    torch.manual_seed(1)
    again, _ = keep_mask(torch.Size([400, 500]), 0.05)
    assert torch.equal(mask, again)  # seeded like every other draw: runs are reproducible
    assert bool(keep_mask(torch.Size([1000]), 0.0)[0].all())


def test_lean_lora_forward_is_peft_forward_with_the_same_mask(tiny_model_dir, train_file, tmp_path):
    import torch

    from training.packed_forward import keep_mask

    trainer, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "out", lora_dropout=0.1))
    module = trainer.packed.layers[1].mlp.up_proj
    assert "forward" in vars(module)  # the lean forward is this instance's
    module.train()
    name = module.active_adapters[0]
    module.lora_B[name].weight.data.normal_(0, 0.05)
    x = torch.randn(1, 7, module.in_features)
    torch.manual_seed(3)
    lean = module(x)
    torch.manual_seed(3)
    mask, keep = keep_mask(x.shape, 0.1)
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    expected = module.base_layer(x) + (x * mask / keep) @ a.t() @ b.t() * module.scaling[name]
    assert torch.allclose(lean, expected, rtol=1e-5, atol=1e-6)
    module.eval()  # no dropout: exactly peft's forward
    assert torch.allclose(module(x), type(module).forward(module, x), rtol=1e-6, atol=1e-7)


def test_held_out_loss_scores_a_sample_of_the_split_in_packed_batches(tiny_model_dir, train_file, tmp_path):
    """A 200-page manual's held-out split (~230 rows) made every evaluation as long as 40 training steps:
    eval_loss reads a seeded sample of `eval_max_rows` rows, a step's worth per padding-free forward."""
    import torch

    heldout = tmp_path / "sft_heldout.jsonl"
    heldout.write_text("".join(json.dumps(_example(i)) + "\n" for i in range(10, 22)))
    cfg = _config(tiny_model_dir, train_file, tmp_path / "out", eval_file=str(heldout), eval_max_rows=5)
    trainer, _, info = build_trainer(cfg)
    assert info["eval_examples"] == 5 and len(trainer.eval_dataset) == 5
    assert trainer.args.per_device_eval_batch_size == cfg.batch_size
    batch = next(iter(trainer.get_eval_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) == 3
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.isfinite(loss)
    again, _, _ = build_trainer(cfg)  # the same sample every time: the curve compares like with like
    assert again.eval_dataset["prompt"] == trainer.eval_dataset["prompt"]
    every, _, _ = build_trainer(_config(tiny_model_dir, train_file, tmp_path / "all", eval_file=str(heldout),
                                        eval_max_rows=0))
    assert len(every.eval_dataset) == 12
