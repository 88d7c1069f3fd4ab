"""LoRA supervised fine-tuning recipe: one file, one process, one RUN.json.

    python -m training.sft --config RUN.json
    accelerate launch -m training.sft --config RUN.json     # several GPUs: unchanged recipe

RUN.json (see `RunConfig`; `training.train.train_adapter` writes it):

    {"model": "/home/me/.flywheel/models/SmolLM2-135M-Instruct",
     "train_file": "/home/me/.flywheel/datasets/20250101/sft_train.jsonl",
     "eval_file": "/home/me/.flywheel/datasets/20250101/sft_heldout.jsonl",
     "output_dir": "/home/me/.flywheel/adapters/v0003",
     "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 2e-4,
     "epochs": 3, "max_steps": -1, "batch_size": 4, "grad_accum": 1, "max_seq_len": 768}

Data: trl conversational prompt-completion JSONL (`prompt` = system + user messages built by
agent.prompts, `completion` = the assistant message). The loss covers completion tokens only.
`eval_file` (the held-out split, optional) is trl's `eval_dataset`: its loss is computed every
`save_steps` and once at the end, and logged as `eval_loss` rows in `losses.jsonl` — a validation
curve to spot over-fitting. Nothing is selected or stopped on it, so the gate's held-out questions
stay unseen by every training decision.

Why the settings differ from trl's defaults (all measured on a 2-core CPU without bf16 units):
  * fp32, not bf16 — without AVX512-bf16/AMX, bf16 matmuls are emulated and several times slower;
  * no gradient checkpointing — it recomputes activations to save memory we don't lack;
  * no padding: on CPU with a Llama-architecture model (the default SmolLM2), each step's rows are
    concatenated into one padding-free row and trained in one forward and backward by
    training/packed_forward.py (`packed_forward`): attention runs per row through SDPA's fused causal
    kernel (a mask — padding, or the block mask of packed rows — would drop it to the math path that
    keeps a seq² matrix per layer), the frozen lower layers run once per row and are cached across
    epochs, the last layer, final norm and LM head run only for the trained positions (with
    completion-only loss the prompt's logits are discarded, and the 49k-word head is the biggest
    matmul of a 135M model), and LoRA's forward is leaner (cheaper dropout draw, fused add). Same
    loss and gradients as the model's own forward (tests/test_packed_forward.py).
    Other models on CPU: one example per forward, accumulated to `batch_size`, the LM head on trained
    positions only (`completion_logits_trainer`) and the frozen lower layers' outputs cached per
    example (training/prefix_cache.py; `activation_cache_mb`, 0 = off). On CUDA, best-fit-decreasing
    packing (padding-free, flash-attention varlen) instead;
  * torch threads = cores, dataloader workers 0 (worker processes only steal the cores), and
    OMP_WAIT_POLICY=PASSIVE so idle OpenMP threads sleep rather than spin on shared cores;
  * learning rate 2e-4, the usual LoRA rate (trl's 2e-5 is for full fine-tuning).
On CUDA the recipe runs in bf16. QLoRA (a 4-bit nf4 base via bitsandbytes) only when `quantize` says so
(FLYWHEEL_QUANTIZE=nf4, on CPU or CUDA; training/quantize.py), never because a GPU happens to be there.

Robustness: checkpoints every `save_steps` (keeping `save_total_limit`), and a rerun of the same
RUN.json resumes from the last one. `FLYWHEEL_TRAIN_CRASH_AFTER_STEP=N` kills the process (SIGKILL,
like the OOM killer) right after checkpoint N is written — for tests of exactly that.
Progress goes to a tqdm bar on stderr and, one JSON line per step prefixed with `FLYWHEEL `, to
stdout for the parent process; the loss curve is appended to `losses.jsonl` in the output dir.
The finished adapter folder holds the adapter, the tokenizer with its chat template pinned, and
`flywheel.json` (base model, data counts, config, final loss, tokens/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

CRASH_ENV = "FLYWHEEL_TRAIN_CRASH_AFTER_STEP"
EVENT_PREFIX = "FLYWHEEL "  # stdout lines the parent parses; everything else is log text


# The held-out loss is a curve to watch for overfitting, scored every save_steps: a few dozen rows give it
# (the standard error of a mean over 32 rows), and a 200-page manual's whole held-out split (~230 rows)
# took 3.5 minutes per evaluation, as long as 40 training steps.
EVAL_MAX_ROWS = 32


@dataclass
class RunConfig:
    """Everything one training run needs; serialised as RUN.json next to the run's output."""

    model: str
    train_file: str
    output_dir: str
    eval_file: str | None = None  # SFT: held-out examples scored for eval_loss (never trained on)
    eval_max_rows: int = EVAL_MAX_ROWS  # SFT: score a seeded sample of this many held-out rows (0 = all)
    init_adapter: str | None = None  # continue from this adapter (DPO after SFT) instead of a fresh LoRA
    method: str = "sft"  # sft | dpo | kto
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_layers: float = 1.0  # share of decoder layers, from the top, that get LoRA (backward stops below)
    learning_rate: float = 2e-4
    epochs: float = 3
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 768
    threads: int = 0  # 0 = all cores
    packing: bool | None = None  # None = auto: on CUDA (varlen flash attention), off on CPU
    quantize: str = "none"  # none | nf4: QLoRA on a 4-bit base (training/quantize.py)
    save_steps: int = 50
    save_total_limit: int = 2
    keep_checkpoints: bool = False  # delete checkpoints/ after a successful run
    seed: int = 42
    dpo_beta: float = 0.1  # DPO's and KTO's β: how far the policy may move from its reference
    sft_weight: float = 1.0  # DPO: weight of the SFT (NLL on chosen) term, the old `rpo_alpha`
    activation_cache_mb: int = 2048  # SFT on CPU: frozen lower layers' outputs kept across epochs (0 = off)
    packed_forward: bool = True  # SFT on CPU, Llama models: one padding-free forward per step (packed_forward.py)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (run id, data counts)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return load_config(cls, path)

    def save(self, path: str | Path) -> None:
        save_config(self, path)

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


Config = TypeVar("Config")


def load_config(cls: type[Config], path: str | Path) -> Config:
    """A RUN.json as the dataclass `cls` (RunConfig, or the retriever's FitConfig)."""
    data = json.loads(Path(path).read_text())
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:  # a typo in RUN.json must not silently train with a default
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    return cls(**data)


def save_config(cfg: Any, path: str | Path) -> None:
    """A run's dataclass config written as RUN.json (read back by load_config)."""
    Path(path).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def emit(event: str, **fields: Any) -> None:
    """One machine-readable progress line for the parent process (only from the main process)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


def set_threads(threads: int) -> int:
    import torch

    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def load_tokenizer(model_path: str) -> Any:
    """The base tokenizer with the chat template pinned: the adapter must be served with the exact
    template it was trained with (a mismatch makes LoRA models ramble without stopping)."""
    from transformers import AutoTokenizer

    from agent.models import CHATML_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=Path(model_path).exists())
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_path: str, quantize: str = "none") -> tuple[Any, bool]:
    """A freshly loaded base model (never the serving one). quantize="none": fp32 on CPU, bf16 on CUDA;
    "nf4": 4-bit nf4 via bitsandbytes (training/quantize.py), on CPU or CUDA. Returns (model, quantized)."""
    import torch
    from transformers import AutoModelForCausalLM

    local = Path(model_path).exists()
    cuda = torch.cuda.is_available()
    if quantize != "none":
        from training.quantize import load_quantized_base

        return load_quantized_base(model_path, quantize, cuda=cuda, local_files_only=local), True
    dtype = torch.bfloat16 if cuda else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=local), False


def load_jsonl(path: str, columns: tuple[str, ...]) -> Any:
    """A datasets.Dataset with only `columns` (ids/sources stay in the file, not in the batches)."""
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=str(path), split="train")
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (have {dataset.column_names})")
    if len(dataset) == 0:
        raise ValueError(f"{path}: no examples")
    return dataset.select_columns(list(columns))


def has_rows(path: str | None) -> bool:
    """An optional data file that exists and holds at least one example."""
    if not path or not Path(path).is_file():
        return False
    with Path(path).open() as handle:
        return any(line.strip() for line in handle)


def common_args(cfg: RunConfig, cuda: bool) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO, with trl's GPU-minded defaults undone for CPU."""
    return dict(
        output_dir=str(cfg.checkpoints_dir),
        use_cpu=not cuda,
        bf16=cuda,  # trl defaults to bf16=True; on this CPU that is several times slower
        fp16=False,
        gradient_checkpointing=False,  # trl defaults to True; it only trades time for memory we have
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else -1,
        # On CPU: one example per forward, accumulated to the same effective batch. Without padding
        # there is no attention mask, so SDPA takes its fused causal kernel; any mask (padding, or the
        # block mask of packed rows) drops it to the math path, which stores a seq² attention matrix
        # per layer for backward (packed 4×768 rows measured ~30 tokens/s on the 135M model).
        per_device_train_batch_size=cfg.batch_size if cuda else 1,
        gradient_accumulation_steps=cfg.grad_accum if cuda else cfg.batch_size * cfg.grad_accum,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        dataloader_num_workers=0,  # workers would compete with torch for the same two cores
        seed=cfg.seed,
        disable_tqdm=False,
    )


def lora_config(cfg: RunConfig, model: Any) -> Any:
    """LoRA on every linear layer of the top `cfg.lora_layers` share of decoder layers (1.0 = all).

    With the lower layers frozen and adapter-free, autograd never backpropagates through them; on CPU
    backward is about half of a step, so adapting only the top layers makes steps faster
    (`bench/train_speed.py`); the seed experiment in the README was trained this way."""
    import torch
    from peft import LoraConfig

    num_layers = model.config.num_hidden_layers
    top = max(1, round(num_layers * cfg.lora_layers))
    targets: Any = "all-linear"
    layers = None
    if top < num_layers:
        # peft wants module names (not "all-linear") with layers_to_transform: the decoder's linear layers.
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                          if isinstance(module, torch.nn.Linear) and re.search(r"\.\d+\.", name)})
        layers = list(range(num_layers - top, num_layers))
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", layers_to_transform=layers)


def make_callback(output_dir: Path) -> Any:
    """Loss curve to losses.jsonl, progress lines to stdout, tokens/s, and the simulated crash.

    The class is defined here so that importing this module (train.py reads RunConfig from it in
    the bot's process) doesn't import transformers.
    """
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def __init__(self, output_dir: Path) -> None:
            self.losses_path = output_dir / "losses.jsonl"
            self.crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
            self.started = 0.0
            self.first_tokens = 0
            self.first_step = 0
            self.last_loss: float | None = None
            self.last_eval_loss: float | None = None
            self.last_eval_step = -1

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.started = time.perf_counter()
            self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen
            if state.global_step:
                emit("resumed", step=state.global_step)
            emit("start", step=state.global_step, max_steps=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if not state.is_world_process_zero or not logs:
                return
            if "eval_loss" in logs:  # the held-out split, scored by Trainer.evaluate
                self.last_eval_loss, self.last_eval_step = float(logs["eval_loss"]), state.global_step
                row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                       "eval_loss": self.last_eval_loss, "time": round(time.perf_counter() - self.started, 2)}
                with self.losses_path.open("a") as sink:
                    sink.write(json.dumps(row) + "\n")
                emit("eval", **row)
                return
            if "loss" not in logs:
                return
            self.last_loss = float(logs["loss"])
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": self.last_loss,
                   "lr": logs.get("learning_rate"), "tokens": state.num_input_tokens_seen,
                   "time": round(time.perf_counter() - self.started, 2)}
            row.update({k: logs[k] for k in ("rewards/accuracies", "rewards/margins") if k in logs})
            with self.losses_path.open("a") as sink:
                sink.write(json.dumps(row) + "\n")
            emit("step", max_steps=state.max_steps, **row)

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            emit("checkpoint", step=state.global_step)
            if self.crash_after and state.global_step >= self.crash_after:
                emit("crash", step=state.global_step, reason=f"{CRASH_ENV}={self.crash_after}")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, exactly like the OOM killer

        def throughput(self, state: Any) -> dict[str, float]:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            tokens = state.num_input_tokens_seen - self.first_tokens
            return {"train_seconds": round(elapsed, 2), "tokens": int(tokens),
                    "tokens_per_second": round(tokens / elapsed, 1),
                    "steps_this_session": state.global_step - self.first_step}

    return _Callback(output_dir)


def last_checkpoint(cfg: RunConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = cfg.checkpoints_dir
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def completion_logits_trainer(base: type) -> type:
    """`base` (SFTTrainer) with a loss that runs the LM head on trained positions only.

    With completion-only loss, ~80% of the tokens are prompt (instructions + retrieved passages)
    whose logits are thrown away — yet the 49k-word LM head is the largest single matmul of a 135M
    model, and trl's chunked log-prob kernel computes it for every position. Passing the trained
    positions as `logits_to_keep` computes the same loss (mean NLL over completion tokens) for a
    fraction of the cost. Measured: see bench/train_speed.py.
    """
    import torch
    import torch.nn.functional as F

    class CompletionLogitsTrainer(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            packed = getattr(self, "packed", None)  # training/packed_forward.py: padding-free CPU batches
            if packed is not None:
                loss, logits = packed.loss(inputs, num_items_in_batch)
                return (loss, {"logits": logits}) if return_outputs else loss
            labels = inputs["labels"]
            # Position t predicts token t+1; shift once here, as the model's own loss would.
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:]
            trained = targets != -100
            # One index set for the whole batch (padding-free batches are a single row anyway).
            positions = trained.any(dim=0).nonzero().flatten()
            if positions.numel() == 0:
                positions = torch.zeros(1, dtype=torch.long, device=labels.device)
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            cache = getattr(self, "prefix_cache", None)  # training/prefix_cache.py: skip the frozen layers
            if cache is not None:
                outputs = cache.forward(model, forward, use_cache=False, logits_to_keep=positions)
            else:
                outputs = model(**forward, use_cache=False, logits_to_keep=positions)
            logits = outputs.logits.float()
            picked = targets[:, positions]
            total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), picked.reshape(-1),
                                    ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else trained.sum()
            loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
            return (loss, outputs) if return_outputs else loss

    return CompletionLogitsTrainer


def build_trainer(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any]]:
    """The SFTTrainer for `cfg` (also used by tests to inspect collated batches)."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from training.packed_forward import supports as supports_packed

    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(cfg.model)
    model, quantized = load_base(cfg.model, cfg.quantize)
    train = load_jsonl(cfg.train_file, ("prompt", "completion"))
    heldout = load_jsonl(cfg.eval_file, ("prompt", "completion")) if has_rows(cfg.eval_file) else None
    if heldout is not None and 0 < cfg.eval_max_rows < len(heldout):
        heldout = heldout.shuffle(seed=cfg.seed).select(range(cfg.eval_max_rows))
    packing = cuda if cfg.packing is None else cfg.packing
    # CPU, Llama decoder: a step's rows in one padding-free row (training/packed_forward.py).
    packed = not cuda and not packing and cfg.packed_forward and supports_packed(model)
    batching: dict[str, Any] = {}
    if packed:  # the same rows per optimizer step as the unpacked recipe, in one forward instead of batch_size
        batching = dict(per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum)
    args = SFTConfig(
        **{**common_args(cfg, cuda), **batching},
        max_length=cfg.max_seq_len,
        completion_only_loss=True,  # prompt tokens carry label -100: learn to answer, not to echo contexts
        # Packing with best-fit decreasing implies padding-free batches; transformers derives the
        # per-example attention blocks from position_ids, so packed examples can't see each other.
        packing=packing,
        packing_strategy="bfd",
        # Without packing, batch examples of similar length so little is padded (GPU batches).
        train_sampling_strategy="group_by_length" if not packing and cuda else "random",
        # Padding-free batches have no padding to leave out (and the pad token is <|im_end|>, which rows contain).
        include_num_input_tokens_seen="all" if packing or packed else "non_padding",
        dataset_num_proc=None,
        # The held-out loss every checkpoint; run() adds one at the end. Loss only: the logits of a
        # completion-only forward are not needed, and gathering them costs memory.
        eval_strategy="steps" if heldout is not None else "no",
        eval_steps=cfg.save_steps,
        # CPU: unpadded, as in training (packed: a step's worth of rows in one padding-free forward)
        per_device_eval_batch_size=cfg.batch_size if cuda or packed else 1,
        prediction_loss_only=True,
    )
    callback = make_callback(Path(cfg.output_dir))
    if cfg.init_adapter:  # continue training an existing adapter (its own LoRA shape wins)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        peft_config = None
    else:
        peft_config = lora_config(cfg, model)
    collator = None
    if packed:  # trl's own padding-free flattening (position ids restart per row); rows truncated by trl as usual
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    trainer = completion_logits_trainer(SFTTrainer)(
        model=model, args=args, train_dataset=train, eval_dataset=heldout, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[callback], data_collator=collator)
    if packed:
        from training.packed_forward import PackedForward, lean_lora, retain_heap

        retain_heap()  # this is the training process: keep the activations' pages from step to step

        trainer.packed = PackedForward.for_model(trainer.model, cfg.activation_cache_mb << 20)
        if trainer.packed is None:  # e.g. an init_adapter that trains embeddings: the lower layers are not fixed
            raise ValueError(f"{cfg.init_adapter or cfg.model}: packed_forward needs frozen layers below the "
                             "adapted ones; set packed_forward to false in RUN.json")
        trainer.prefix_cache = trainer.packed.cache  # for stats (bench/train_speed.py)
        lean_lora(trainer.model, trainer.packed.layers[trainer.packed.first:])
    elif not cuda:  # every epoch after the first skips the frozen lower layers (exact; see the module)
        from training.prefix_cache import PrefixCache

        trainer.prefix_cache = PrefixCache.for_model(trainer.model, cfg.activation_cache_mb << 20)
    info = {"train_examples": len(train), "eval_examples": len(heldout) if heldout is not None else 0,
            "quantized": quantized, "device": "cuda" if cuda else "cpu", "packed_forward": bool(packed)}
    return trainer, callback, info


def finish(cfg: RunConfig, trainer: Any, callback: Any, info: dict[str, Any], resumed_from: str | None) -> dict[str, Any]:
    """Save adapter + tokenizer + flywheel.json into output_dir; return the summary."""
    out = Path(cfg.output_dir)
    trainer.save_model(str(out))  # adapter_config.json + adapter_model.safetensors (main process only)
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))  # tokenizer + the pinned chat template
        summary = {
            "base_model": cfg.model,
            "method": cfg.method,
            "data_counts": {**cfg.extra.get("data_counts", {}), **{k: v for k, v in info.items() if k.endswith("examples")}},
            "config": dataclasses.asdict(cfg),
            "final_loss": callback.last_loss,
            "eval_loss": callback.last_eval_loss,
            "global_step": trainer.state.global_step,
            "resumed_from": resumed_from,
            "device": info.get("device"),
            "quantized": info.get("quantized"),
            **callback.throughput(trainer.state),
        }
        (out / "flywheel.json").write_text(json.dumps(summary, indent=2))
        if not cfg.keep_checkpoints:
            shutil.rmtree(cfg.checkpoints_dir, ignore_errors=True)
        emit("done", **{k: summary[k] for k in ("final_loss", "global_step", "tokens_per_second", "resumed_from")})
    return summary


def continue_or_new_adapter(cfg: RunConfig, model: Any) -> tuple[Any, Any]:
    """(model, peft_config) for a preference stage: continue `cfg.init_adapter` (the SFT stage's adapter,
    trainable) when given, else a fresh LoRA config for the trainer to apply."""
    if cfg.init_adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True), None
    return model, lora_config(cfg, model)


def run_recipe(cfg: RunConfig, build: Any) -> dict[str, Any]:
    """Every recipe's run (SFT, DPO, KTO): build its trainer, train (resuming from the last checkpoint if
    one exists), score the held-out split when the trainer has one, save, and drop the frozen reference
    copy trl's preference trainers save as a second adapter (serving only needs the trained one)."""
    from storage.hub import quiet_libraries

    quiet_libraries()
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    threads = set_threads(cfg.threads)
    trainer, callback, info = build(cfg)
    if info.get("quantized") and info.get("device") == "cpu":  # QLoRA on CPU: the adapter trains in float32
        from training.quantize import float32_adapter

        float32_adapter(trainer.model)
    resume = last_checkpoint(cfg)
    emit("config", threads=threads, resume_from=resume, **info)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.eval_dataset is not None and callback.last_eval_step != trainer.state.global_step:
        trainer.evaluate()  # the final adapter's held-out loss (the last periodic one may be steps behind)
    summary = finish(cfg, trainer, callback, info, resume)
    shutil.rmtree(Path(cfg.output_dir) / "ref", ignore_errors=True)
    return summary


def run(cfg: RunConfig) -> dict[str, Any]:
    """Train (resuming from the last checkpoint if one exists) and save. Returns the summary."""
    return run_recipe(cfg, build_trainer)


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set: idle OpenMP threads sleep instead of spinning. Training shares
    the cores with serving (at a lower priority) and other jobs; with spinning threads an oversubscribed
    2-thread forward+backward of SmolLM2-135M took 8–10 s instead of 3 s (load ~5 on 2 cores). Read when
    torch loads its OpenMP runtime, so call it before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    passive_openmp()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="RUN.json")
    cfg = RunConfig.load(parser.parse_args(argv).config)
    if cfg.method != "sft":
        raise SystemExit(f"RUN.json method is {cfg.method!r}; run it with python -m training.{cfg.method}")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
