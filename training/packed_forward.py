"""The SFT loss on CPU without the work the loss never reads: one packed forward per optimizer step.

`flywheel train`'s completion-only loss reads the logits of the answer tokens only (~10% of a RAG row:
the rest is instructions and retrieved passages), and with LoRA on the top half of the decoder nothing
below the first adapted layer ever gets a gradient. `PackedForward.loss` computes exactly that loss and
its gradients for a padding-free batch (trl's `DataCollatorForLanguageModeling(padding_free=True)`: the
step's rows concatenated into one row, `position_ids` restarting at 0 for each) doing only what it needs:

  * one forward and one backward per optimizer step over all its rows (matrix products over ~1800 rows
    instead of four calls of ~450, a quarter of the per-call overhead), no padding token anywhere;
  * attention per row (each row's own causal block through SDPA's fused causal kernel, called on slices
    of the packed tensors): no row sees another, and no seq² mask is ever built;
  * the frozen lower layers run once per row under `no_grad` and their output is kept per row
    (training/prefix_cache.py's budget and exactness rules), so epochs 2 and 3 start at the first
    adapted layer;
  * the step's rows share their opening tokens (the system prompt and the context's first words, ~70 of
    a ~400-token RAG row): the adapted layers compute that common prefix once per step, and every other
    row attends to its keys and values (`shared_prefix`) — the same numbers a row of its own would give,
    as causal attention makes a prefix's states independent of what follows it;
  * the last layer computes keys and values for every position (the answer attends to them) but its
    queries, attention output, MLP, the final norm and the LM head only for the positions whose next
    token is trained: the rest of that layer's output feeds nothing;
  * LoRA's dropout mask is drawn as 16-bit random integers, four per 64-bit draw, instead of one float
    per element (torch's CPU bernoulli_ was ~10% of a step), and the adapter's product is added to the
    base layer's output inside the matrix multiply (`addmm`, with the LoRA scale and dropout's 1/keep
    folded into its alpha) instead of two more passes over the output (`lean_lora`).

  * glibc keeps the freed activations' memory for the next step (`retain_heap`): by default it returns
    the heap's free top to the kernel once a step's ~1 GB of activations is freed, and the next step
    faults every page back in, zeroed (~150k page faults a step, measured).

Same loss and gradients as the model's own forward over the same rows (tests/test_packed_forward.py
compares them, and the loss curve of whole runs, on the tiny model). The one difference is the
dropout mask's random draw: the same Bernoulli(keep) per element (the drop probability rounded to a
multiple of 2^-16, 0.050003 for 0.05, and the kept values scaled by its exact inverse), but a
different sample than peft's `nn.Dropout` would draw.

Llama-architecture decoders only (SmolLM2, Llama, TinyLlama, …: `supports`); anything else keeps
the model's own forward (training/sft.py decides).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import types
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F

from training.prefix_cache import PrefixCache, first_trainable_layer

# A 16-bit random integer is dropped below this many steps of 2^-16 from the bottom of its range.
_INT16_SPAN = 1 << 16
# Shorter common prefixes are not worth the layout change (a few positions per row).
MIN_SHARED = 8


def _decoder_parts(model: Any) -> tuple[Any, Any] | None:
    """(causal LM, its decoder) under any peft wrapping, or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    if decoder is None or getattr(base, "lm_head", None) is None:
        return None
    return base, decoder


def supports(model: Any) -> bool:
    """Whether `model` is a Llama-architecture causal LM this module reproduces exactly: the decoder
    layers are transformers' LlamaDecoderLayer (pre-norm attention with rotary embeddings, then a gated
    MLP) and attention has no dropout."""
    parts = _decoder_parts(model)
    if parts is None:
        return False
    base, decoder = parts
    layers = getattr(decoder, "layers", None)
    if not layers or any(type(layer).__name__ != "LlamaDecoderLayer" for layer in layers):
        return False
    config = base.config
    return float(getattr(config, "attention_dropout", 0.0) or 0.0) == 0.0 and hasattr(decoder, "rotary_emb")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of (1, heads, n, dim) states: transformers' apply_rotary_pos_emb."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def shared_prefix(ids: torch.Tensor, bounds: list[tuple[int, int]], trained: torch.Tensor,
                  minimum: int = MIN_SHARED) -> int:
    """Length of the prefix every row of a packed batch opens with, (n,) token ids, stopping before each
    row's first trained position (a shared position must not need its own logits) and one short of the
    shortest row (every row keeps a position of its own); 0 for one row or fewer than `minimum` tokens."""
    if len(bounds) < 2:
        return 0
    first_a, first_b = bounds[0]
    limit = min(b - a for a, b in bounds) - 1
    for a, b in bounds:
        positions = trained[a:b].nonzero()
        if positions.numel():
            limit = min(limit, int(positions[0]))
    limit = max(limit, 0)
    head = ids[first_a: first_a + limit]
    same = torch.ones(limit, dtype=torch.bool)
    for a, _ in bounds[1:]:
        same &= ids[a: a + limit] == head
    length = limit if bool(same.all()) else int((~same).nonzero()[0])
    return length if length >= minimum else 0


def segment_bounds(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]]:
    """[start, end) of each row of a padding-free batch: a row starts wherever its position id is 0."""
    if position_ids is None:
        return [(0, length)]
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], length], strict=True))


class PackedForward:
    """The completion-only loss of a Llama-style LoRA model over a padding-free batch (module docstring)."""

    def __init__(self, model: Any, first: int, cache: PrefixCache | None) -> None:
        base, decoder = _decoder_parts(model)  # type: ignore[misc]
        self.base, self.decoder, self.first, self.cache = base, decoder, first, cache
        self.layers = decoder.layers
        self.shared = 0  # the last step's shared opening, in tokens (shared_prefix)

    @classmethod
    def for_model(cls, model: Any, cache_bytes: int) -> PackedForward | None:
        """The packed loss for a (peft) `model`, or None when it is not exact for it: not a Llama decoder,
        or a trainable parameter or active dropout below the first adapted layer (then the rows' lower
        activations would not be fixed). `cache_bytes` bounds the lower layers' per-row cache (0 = off)."""
        if not supports(model):
            return None
        base, decoder = _decoder_parts(model)  # type: ignore[misc]
        first = first_trainable_layer(decoder.layers)
        if first is None:
            return None
        lower = [decoder.embed_tokens, *decoder.layers[:first]]
        if any(p.requires_grad for module in lower for p in module.parameters()):
            return None
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for module in lower for m in module.modules()):
            return None
        cache = PrefixCache(decoder.layers, first, cache_bytes) if first > 0 and cache_bytes > 0 else None
        return cls(model, first, cache)

    # -- the lower, frozen layers -------------------------------------------------------------------

    def _lower(self, input_ids: torch.Tensor, bounds: list[tuple[int, int]], cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        """Hidden states entering the first adapted layer, (1, n, hidden), without autograd: from the
        cache for rows seen before, else computed (all missing rows in one packed pass) and kept."""
        ids = input_ids.reshape(-1)
        keys = [self.cache.row_key(ids[a:b]) if self.cache else None for a, b in bounds]
        found = [self.cache.get(key) if self.cache and key is not None else None for key in keys]
        missing = [i for i, state in enumerate(found) if state is None]
        with torch.no_grad():
            if missing:
                index = torch.cat([torch.arange(*bounds[i]) for i in missing])
                local, start = [], 0
                for i in missing:
                    a, b = bounds[i]
                    local.append((start, start + b - a))
                    start += b - a
                hidden = self.decoder.embed_tokens(ids[index].unsqueeze(0))
                rows_cos, rows_sin = cos[:, index], sin[:, index]
                for layer in self.layers[: self.first]:
                    hidden = self._layer(layer, hidden, rows_cos, rows_sin, local)
                for i, (a, b) in zip(missing, local, strict=True):
                    found[i] = hidden[:, a:b]
                    if self.cache is not None and keys[i] is not None:
                        self.cache.put(keys[i], found[i].clone())
        if self.cache is not None:
            self.cache.hits += len(bounds) - len(missing)
            self.cache.misses += len(missing)
        return found[0] if len(found) == 1 else torch.cat(found, dim=1)

    # -- one decoder layer ----------------------------------------------------------------------------

    def _layer(self, layer: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               bounds: list[tuple[int, int]], shared: int = 0, rows: torch.Tensor | None = None) -> torch.Tensor:
        """LlamaDecoderLayer.forward over a padding-free batch, each row attending only to itself. With
        `shared` > 0 the first row's first `shared` positions are every row's opening too: the other rows
        hold only their own positions and attend to those first. With `rows` (sorted positions) only those
        positions' outputs are computed, (1, len(rows), hidden): keys and values still come from every
        position, as the rows' attention needs them."""
        attn = layer.self_attn
        n, dim = hidden.shape[1], attn.head_dim
        x = layer.input_layernorm(hidden)
        x_q = x if rows is None else x[:, rows]
        q = attn.q_proj(x_q).view(1, x_q.shape[1], -1, dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, n, -1, dim).transpose(1, 2)
        v = attn.v_proj(x).view(1, n, -1, dim).transpose(1, 2)
        q_cos, q_sin = (cos, sin) if rows is None else (cos[:, rows], sin[:, rows])
        q, k = _rotate(q, q_cos, q_sin), _rotate(k, cos, sin)
        gqa = q.shape[1] != k.shape[1]
        sizes = [b - a for a, b in bounds]
        # split, not slicing: its backward concatenates, where each slice's would zero-fill a whole copy
        ks, vs = k.split(sizes, dim=2), v.split(sizes, dim=2)
        if rows is None:
            qs = q.split(sizes, dim=2)
        else:
            cuts = torch.searchsorted(rows, torch.tensor([a for a, _ in bounds] + [n])).tolist()
            qs = q.split([hi - lo for lo, hi in zip(cuts, cuts[1:])], dim=2)
        head_k, head_v = ks[0][:, :, :shared], vs[0][:, :, :shared]
        outputs = []
        for i, (a, b) in enumerate(bounds):
            opening = shared if i > 0 else 0  # positions of the first row this row also attends to
            row_k = torch.cat((head_k, ks[i]), dim=2) if opening else ks[i]
            row_v = torch.cat((head_v, vs[i]), dim=2) if opening else vs[i]
            if rows is None:
                # Causal attention is aligned top-left, so a row's queries are preceded by the opening's
                # own (already computed) queries and their outputs dropped: the fused causal kernel
                # stays, and it costs the opening's small triangle again.
                row_q = torch.cat((qs[0][:, :, :shared], qs[i]), dim=2) if opening else qs[i]
                out = F.scaled_dot_product_attention(row_q, row_k, row_v, is_causal=True, scale=attn.scaling,
                                                     enable_gqa=gqa)
                outputs.append(out[:, :, opening:])
            else:  # the chosen positions of this row, each seeing the opening and its row up to itself
                lo, hi = cuts[i], cuts[i + 1]
                if lo == hi:
                    continue
                mask = torch.arange(a - opening, b).unsqueeze(0) <= rows[lo:hi].unsqueeze(1)
                out = F.scaled_dot_product_attention(qs[i], row_k, row_v, attn_mask=mask, scale=attn.scaling,
                                                     enable_gqa=gqa)
                outputs.append(out)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        out = attn.o_proj(out.transpose(1, 2).reshape(1, out.shape[2], -1))
        hidden = (hidden if rows is None else hidden[:, rows]) + out
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    # -- the loss ---------------------------------------------------------------------------------------

    def loss(self, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the trained tokens' cross-entropy / their count, those tokens' logits) for a batch of
        `input_ids` (1, n) with `labels` and optional `position_ids`: what the model's forward plus
        completion-only cross-entropy gives, from the hidden states of the trained positions only."""
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        if input_ids.shape[0] != 1:
            raise ValueError("PackedForward takes padding-free batches (one packed row)")
        n = input_ids.shape[1]
        position_ids = inputs.get("position_ids")
        bounds = segment_bounds(position_ids, n)
        if position_ids is None:
            position_ids = torch.arange(n).unsqueeze(0)
        # Position t predicts token t+1 of its own row: never across a row boundary.
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:].clone()
        targets[0, [b - 1 for _, b in bounds]] = -100
        embed = self.decoder.embed_tokens.weight
        cos, sin = self.decoder.rotary_emb(embed[:1].unsqueeze(0), position_ids=position_ids)
        hidden = self._lower(input_ids, bounds, cos, sin)
        # From here on the rows after the first drop the opening they share with it (`_layer`).
        self.shared = shared = shared_prefix(input_ids[0], bounds, targets[0] != -100)
        if shared:
            keep = torch.cat([torch.arange(*bounds[0])] + [torch.arange(a + shared, b) for a, b in bounds[1:]])
            hidden, cos, sin, targets = hidden[:, keep], cos[:, keep], sin[:, keep], targets[:, keep]
            ends = list(accumulate([bounds[0][1] - bounds[0][0]] + [b - a - shared for a, b in bounds[1:]]))
            bounds = list(zip([0, *ends[:-1]], ends, strict=True))
        rows = (targets[0] != -100).nonzero().flatten()
        if rows.numel() == 0:  # nothing to learn here: a zero loss that still reaches the graph
            rows = torch.zeros(1, dtype=torch.long)
        top = self.layers[self.first:]
        for layer in top[:-1]:
            hidden = self._layer(layer, hidden, cos, sin, bounds, shared)
        hidden = self._layer(top[-1], hidden, cos, sin, bounds, shared, rows=rows)
        logits = self.base.lm_head(self.decoder.norm(hidden))[0].float()
        total = F.cross_entropy(logits, targets[0, rows], ignore_index=-100, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        return total / torch.as_tensor(count, device=total.device).clamp(min=1), logits


def retain_heap() -> bool:
    """Make glibc malloc keep freed memory in this process (a training process: it exits when done).

    With the default dynamic thresholds a packed step's large activations (up to ~11 MB each) are
    served from the heap, and when backward frees them the heap's free top is trimmed back to the
    kernel, so every step page-faults its ~1 GB of activations in again. Fixing the mmap threshold at
    glibc's maximum (32 MB; larger blocks still get their own mapping, released on free) and the trim
    threshold at 1 GB keeps those pages mapped. False where this is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


# -- LoRA's forward, leaner -------------------------------------------------------------------------


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """(bool mask of `shape`, each element kept with probability `keep`), `keep`) for dropout rate `p`:
    16-bit uniform integers, four per 64-bit draw of torch's generator (seeded like every other draw),
    an element dropped below round(p·2^16) of them — the draw torch's bernoulli_ makes one float at a
    time, at a quarter of the generator calls. `keep` is the exact probability, for the 1/keep scale."""
    drop = round(p * _INT16_SPAN)
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes >= drop - (_INT16_SPAN >> 1), 1.0 - drop / _INT16_SPAN


def _lean_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's lora.Linear forward for one active float adapter: base(x) + scale·B(A(dropout(x))), with the
    mask from `keep_mask` and the adapter's product accumulated into the base output by addmm."""
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return type(self).forward(self, x, *args, **kwargs)  # anything unusual: peft's own code
    name = self.active_adapters[0]
    if name not in self.lora_A or name in self.lora_variant:
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    scale = self.scaling[name]
    dropout = self.lora_dropout[name]
    result = self.base_layer(x)
    if isinstance(dropout, torch.nn.Dropout) and dropout.training and dropout.p > 0:
        mask, keep = keep_mask(x.shape, dropout.p)
        low = F.linear(x * mask, a)
        scale = scale / keep
    else:
        low = F.linear(x, a)
    shape = result.shape
    out = torch.addmm(result.reshape(-1, shape[-1]), low.reshape(-1, low.shape[-1]), b.t(), alpha=scale)
    return out.view(shape)


def lean_lora(model: Any, layers: Any) -> int:
    """Give every plain float LoRA linear in `layers` `_lean_forward` (an instance attribute: the class
    and every other model keep peft's); returns how many were changed."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    changed = 0
    for layer in layers:
        for module in layer.modules():
            if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear \
                    and not getattr(module, "use_dora", {}).get(module.active_adapters[0], False) \
                    and module.base_layer.weight.dtype == torch.float32:
                module.forward = types.MethodType(_lean_forward, module)
                changed += 1
    return changed
