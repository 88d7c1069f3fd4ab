"""LoRA KTO recipe on votes on the model's own drafts: same shape as training/sft.py and training/dpo.py.

    python -m training.kto --config RUN.json            # RUN.json with "method": "kto"
    accelerate launch -m training.kto --config RUN.json

Data: `kto.jsonl`, lines `{"prompt": [system, user], "completion": [assistant draft], "label": bool}`
(training/dataset.py: the stored draft, label = net vote > 0). Unlike DPO it needs no second answer
to the same question, so every vote counts — but only as a stage after SFT/DPO, and only with
`settings.kto_min_rows` rows of both labels (`training.train.preference_stages`). Choices, and why:
  * `init_adapter` (the previous stage's adapter) is loaded trainable and trl keeps a frozen copy as
    the "ref" adapter: the reference is what SFT/DPO learned, so KTO only measures movement from it.
  * 👍 and 👎 rarely arrive in equal numbers; the smaller side's loss is weighted up so both pull
    equally (λ_D·n_D = λ_U·n_U, inside the range the KTO paper, eq. 8, recommends).
  * KTO estimates its KL term from mismatched (prompt, completion) pairs within one batch, so a
    batch must hold ≥ 2 examples even on CPU (padding costs speed there; the data is small) and the
    sampler stays sequential (trl's requirement; training/dataset.py shuffles the file instead).
  * Same CPU settings as SFT otherwise: fp32, no gradient checkpointing, threads = cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from training.sft import (
    RunConfig,
    common_args,
    continue_or_new_adapter,
    load_base,
    load_jsonl,
    load_tokenizer,
    make_callback,
    run_recipe,
)


def label_weights(labels: list[bool]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the rarer label weighted up to balance the other."""
    up, down = sum(labels), len(labels) - sum(labels)
    if not up or not down:
        return 1.0, 1.0
    return (down / up, 1.0) if down > up else (1.0, up / down)


def build_trainer(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from trl import KTOConfig, KTOTrainer

    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(cfg.model)
    model, quantized = load_base(cfg.model, cfg.quantize)
    train = load_jsonl(cfg.train_file, ("prompt", "completion", "label"))
    desirable, undesirable = label_weights([bool(x) for x in train["label"]])
    args = KTOConfig(
        **{**common_args(cfg, cuda),
           # The KL estimate pairs each prompt with another example's completion in the same batch, so
           # the CPU recipe's one-example forwards don't work here; same effective batch.
           "per_device_train_batch_size": max(2, cfg.batch_size),
           "gradient_accumulation_steps": cfg.grad_accum},
        max_length=cfg.max_seq_len,
        beta=cfg.dpo_beta,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        train_sampling_strategy="sequential",
        include_num_input_tokens_seen="non_padding",
    )
    model, peft_config = continue_or_new_adapter(cfg, model)
    callback = make_callback(Path(cfg.output_dir))
    trainer = KTOTrainer(model=model, ref_model=None, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[callback])
    info = {"train_examples": len(train), "desirable": int(sum(train["label"])), "quantized": quantized,
            "device": "cuda" if cuda else "cpu"}
    return trainer, callback, info


def run(cfg: RunConfig) -> dict[str, Any]:
    return run_recipe(cfg, build_trainer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="RUN.json")
    cfg = RunConfig.load(parser.parse_args(argv).config)
    if cfg.method != "kto":
        raise SystemExit(f"RUN.json method is {cfg.method!r}; run it with python -m training.{cfg.method}")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
