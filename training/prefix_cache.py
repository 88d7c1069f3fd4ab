"""Cache of the frozen lower layers' activations, reused across epochs.

With LoRA on the top share of the decoder only (`RunConfig.lora_layers`, default 0.5), nothing below the
first adapted layer has a trainable parameter, so no gradient flows there and, for a given example, the
hidden states entering that layer are the same in every epoch: they depend only on the token ids (and
the attention mask / position ids), never on the adapter being trained. `PrefixCache` keeps them:

    cache = PrefixCache.for_model(peft_model, max_bytes=2 << 30)   # None when there is nothing to gain
    outputs = cache.forward(model, {"input_ids": …, "attention_mask": …}, use_cache=False, logits_to_keep=…)

The first time an example is seen the model runs as usual and a forward pre-hook on the first adapted
layer copies that layer's input; afterwards the forward is given the cached states as `inputs_embeds`
and the frozen layers below return their input untouched, so only the adapted layers (and the LM head)
run. Everything above — rotary position embeddings from the position ids, the causal mask from the
attention mask — is computed by the model exactly as before, so the loss and the gradients are the same
(tests/test_prefix_cache.py compares them with the plain forward).

It is only used when it is exact: the lower layers must hold no trainable parameter and no active
dropout (Llama-style models: `attention_dropout` 0, no `nn.Dropout` with p > 0), and a forward with any
input besides input_ids / attention_mask / position_ids (e.g. packed varlen batches) runs uncached. The
key is a hash of those tensors, so a different truncation, padding or packing is simply a miss. Memory:
hidden size × tokens × 4 bytes per example (576 × 450 tokens ≈ 1 MB for SmolLM2-135M); past `max_bytes`
new examples are not cached (they run the plain forward).
"""

from __future__ import annotations

import hashlib
from typing import Any

KEYED_INPUTS = ("input_ids", "attention_mask", "position_ids")


def _decoder_layers(model: Any) -> tuple[Any, Any]:
    """(decoder, its list of layers) of a (peft-wrapped) causal LM, or (None, None)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    return (decoder, layers) if layers is not None else (None, None)


def first_trainable_layer(layers: Any) -> int | None:
    """Index of the lowest decoder layer with a trainable parameter (None: none is trainable)."""
    for index, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return None


def _frozen_and_deterministic(model: Any, decoder: Any, layers: Any, first: int) -> bool:
    import torch

    config = getattr(decoder, "config", None) or getattr(model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    embed = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    modules = [*layers[:first], *([embed] if embed is not None else [])]
    for module in modules:
        if any(p.requires_grad for p in module.parameters()):
            return False
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules()):
            return False
    return True


class PrefixCache:
    """Hidden states entering the first adapted layer, per example (see the module docstring)."""

    def __init__(self, layers: Any, first: int, max_bytes: int) -> None:
        self.layers, self.first, self.max_bytes = layers, first, max_bytes
        self.states: dict[bytes, Any] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    @classmethod
    def for_model(cls, model: Any, max_bytes: int) -> PrefixCache | None:
        """A cache for `model`, or None when it would not be exact or would save nothing (LoRA on the
        lowest layer too, trainable embeddings, dropout below the adapted layers, no cache budget)."""
        if max_bytes <= 0:
            return None
        decoder, layers = _decoder_layers(model)
        if layers is None:
            return None
        first = first_trainable_layer(layers)
        if not first or not _frozen_and_deterministic(model, decoder, layers, first):
            return None
        return cls(layers, first, max_bytes)

    @staticmethod
    def key(inputs: dict[str, Any]) -> bytes | None:
        """Hash of the inputs the lower layers see; None when a forward carries anything else."""
        if set(inputs) - set(KEYED_INPUTS) or inputs.get("input_ids") is None:
            return None
        digest = hashlib.blake2b(digest_size=20)
        for name in KEYED_INPUTS:
            value = inputs.get(name)
            digest.update(name.encode())
            if value is not None:
                digest.update(str((tuple(value.shape), str(value.dtype))).encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()

    @staticmethod
    def row_key(input_ids: Any) -> bytes:
        """Key of one row of a padding-free batch (training/packed_forward.py): its token ids alone, as its
        position ids are always 0..n-1 and it attends to nothing else."""
        ids = input_ids.detach().cpu().contiguous()
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"row:{ids.numel()}:{ids.dtype}".encode())
        digest.update(ids.numpy().tobytes())
        return digest.digest()

    def get(self, key: bytes) -> Any:
        """The cached states for `key`, or None."""
        return self.states.get(key)

    def put(self, key: bytes, states: Any) -> bool:
        """Keep `states` (no autograd history) under `key` unless that would exceed the budget."""
        size = states.numel() * states.element_size()
        if key in self.states or self.bytes + size > self.max_bytes:
            return False
        self.states[key] = states
        self.bytes += size
        return True

    def forward(self, model: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
        """`model(**inputs, **kwargs)`, skipping the frozen layers when this example's states are cached."""
        key = self.key(inputs)
        if key is None:
            return model(**inputs, **kwargs)
        cached = self.states.get(key)
        if cached is not None:
            self.hits += 1
            return self._from_cache(model, inputs, cached, **kwargs)
        self.misses += 1
        return self._capturing(model, inputs, key, **kwargs)

    def _capturing(self, model: Any, inputs: dict[str, Any], key: bytes, **kwargs: Any) -> Any:
        captured: list[Any] = []

        def grab(module: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
            hidden = args[0] if args else kw["hidden_states"]
            captured.append(hidden.detach().clone())

        handle = self.layers[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            outputs = model(**inputs, **kwargs)
        finally:
            handle.remove()
        if captured and not captured[0].requires_grad:
            size = captured[0].numel() * captured[0].element_size()
            if self.bytes + size <= self.max_bytes:
                self.states[key] = captured[0]
                self.bytes += size
        return outputs

    def _from_cache(self, model: Any, inputs: dict[str, Any], cached: Any, **kwargs: Any) -> Any:
        def passthrough(hidden_states: Any, *args: Any, **kw: Any) -> Any:
            return hidden_states

        lower = self.layers[: self.first]
        for layer in lower:
            layer.forward = passthrough  # instance attribute: shadows the class's forward for this call
        try:
            rest = {k: v for k, v in inputs.items() if k != "input_ids"}
            return model(inputs_embeds=cached, **rest, **kwargs)
        finally:
            for layer in lower:
                del layer.forward

    def stats(self) -> dict[str, int]:
        return {"examples": len(self.states), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}
