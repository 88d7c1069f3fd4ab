"""QLoRA: the training base in 4-bit nf4 (bitsandbytes), chosen explicitly, never by the hardware.

    FLYWHEEL_QUANTIZE=none   # default: LoRA on the float base (fp32 on CPU, bf16 on CUDA)
    FLYWHEEL_QUANTIZE=nf4    # QLoRA: LoRA on a 4-bit NormalFloat base; needs `pip install 'flywheel[qlora]'`

The name and the values follow litgpt's `--quantize` (`bnb.nf4`); "none" is the float base. The 4-bit base
is only ever the *training* base, loaded in the fresh training subprocess (training/sft.py, dpo.py,
kto.py). Serving keeps the float base and loads the adapter on top of it, the usual QLoRA deployment:
the LoRA weights are ordinary float tensors, the same shape for either base, and the small difference
between the 4-bit weights the adapter was trained against and the float weights it is served with
is what the gate measures like any other change (it scores the candidate on the serving model).

Unsupported combinations are refused before any work (`quantize_problem`, called by `train_adapter`
and at the start of a cycle): an unknown value, nf4 with a backend that isn't the local transformers
model, nf4 without bitsandbytes or with one too old for CPU 4-bit kernels.

On CPU the 4-bit layers compute in float32 (bf16 is emulated, and slow, on CPUs without bf16 units);
on CUDA in bf16. Double quantization (the quantization constants quantized too) as in the QLoRA paper.

A trap measured on this project's CPU (AVX512-bf16, bitsandbytes 0.50): a Linear4bit layer that runs a
forward in eval mode without gradients repacks its weight in place into a CPU inference layout
(`packing_format_for_cpu`) and never unpacks it; the backward through that layout is wrong, so LoRA
gradients after any inference on the same model are off by tens of percent while the loss looks
normal. The trainer's own periodic held-out evaluation is such an inference. Hence: training runs in a
fresh process whose model never served an answer, and `keep_training_layout` switches that repacking
off on every 4-bit layer of the training model (tests/test_qlora.py checks the gradients against the
dequantized float model, after an evaluation).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

QUANTIZE_CHOICES = ("none", "nf4")
MIN_BITSANDBYTES = (0, 48)  # the first release whose manylinux wheel runs nf4 on CPU (measured: 0.48.2, 0.50.2)
INSTALL_HINT = "pip install 'flywheel[qlora]'"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version, or None (without importing it: no torch import here)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def quantize_problem(quantize: str, backend: str = "transformers") -> str | None:
    """Why `quantize` can't train here (a message that says what to do), or None when it can."""
    if quantize not in QUANTIZE_CHOICES:
        return f"FLYWHEEL_QUANTIZE must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}"
    if quantize == "none":
        return None
    if backend != "transformers":
        return (f"FLYWHEEL_QUANTIZE={quantize} trains the adapter on a 4-bit copy of the local model, but "
                f"FLYWHEEL_BACKEND={backend} answers with a remote model that never loads that adapter; use "
                "FLYWHEEL_BACKEND=transformers, or FLYWHEEL_QUANTIZE=none")
    version = bitsandbytes_version()
    if version is None:
        return f"FLYWHEEL_QUANTIZE={quantize} needs bitsandbytes, which is not installed: {INSTALL_HINT}"
    if _version_tuple(version) < MIN_BITSANDBYTES:
        floor = ".".join(map(str, MIN_BITSANDBYTES))
        return (f"FLYWHEEL_QUANTIZE={quantize} needs bitsandbytes >= {floor} (4-bit kernels on CPU); "
                f"{version} is installed: pip install -U 'flywheel[qlora]'")
    return None


def import_bitsandbytes(quantize: str) -> Any:
    """bitsandbytes, imported for real (in the training process); a broken install is a clear error."""
    problem = quantize_problem(quantize)
    if problem:
        raise RuntimeError(problem)
    try:
        import bitsandbytes
    except Exception as exc:  # a wheel without this platform's native library, a CUDA mismatch, ...
        raise RuntimeError(f"FLYWHEEL_QUANTIZE={quantize}: bitsandbytes is installed but does not import here "
                           f"({type(exc).__name__}: {exc}); reinstall it with {INSTALL_HINT}") from exc
    return bitsandbytes


def quantization_config(quantize: str, cuda: bool) -> Any:
    """transformers' BitsAndBytesConfig for `quantize` ("nf4"): float32 compute on CPU, bf16 on CUDA."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantize != "nf4":
        raise ValueError(f"no 4-bit config for quantize={quantize!r}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)


def keep_training_layout(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout (see the module
    docstring: gradients through the repacked layout are wrong). Returns the number of 4-bit layers."""
    import bitsandbytes as bnb

    layers = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            layers += 1
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return layers


def load_quantized_base(model_path: str, quantize: str, *, cuda: bool, local_files_only: bool) -> Any:
    """The 4-bit training base: loaded quantized, the repacking trap disabled, and prepared for k-bit
    training by peft (frozen base, float32 norms/embeddings; no gradient checkpointing, which only
    trades time for memory)."""
    import os

    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    import_bitsandbytes(quantize)
    device: Any = int(os.environ.get("LOCAL_RANK", "0")) if cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quantization_config(quantize, cuda),
                                                 local_files_only=local_files_only, device_map={"": device})
    if not keep_training_layout(model):
        raise RuntimeError(f"FLYWHEEL_QUANTIZE={quantize}: {model_path} loaded without any 4-bit layer")
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def float32_adapter(model: Any) -> int:
    """Trainable (LoRA) weights back to float32 on CPU; returns how many were cast.

    trl's trainers cast a quantized model's adapter weights to bf16 (the QLoRA paper's GPU recipe). On CPU
    the 4-bit layers compute in float32, so a bf16 adapter only adds casts, bf16 matmuls (emulated, slow,
    on CPUs without bf16 units) and an optimizer whose small updates round away in bf16's 8-bit mantissa.
    Called after the trainer is built and before `train()` creates the optimizer."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
