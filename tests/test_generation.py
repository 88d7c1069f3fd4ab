"""Generation backends: the local transformers model (streaming, stopping, LoRA hot-swap) on a tiny
random model, the hosted backends against loopback fakes through their real SDKs, and one slow
test on the real default SmolLM2 model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import SecretStr

from agent.generation import (
    AnthropicGenerator,
    Generator,
    OpenAIGenerator,
    TransformersGenerator,
    load_generator,
)
from agent.models import END_OF_TURN
from storage.config import Settings
from storage.db import Store, now

MESSAGES = [
    {"role": "system", "content": "You answer questions about the team handbook."},
    {"role": "user", "content": "How do I deploy?"},
]


# --- helpers -------------------------------------------------------------------------------------
def _make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter on the tiny model with random (non-zero) weights, so it changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.5)  # lora_B starts at zero: perturb it
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: _make_adapter(tiny_model_dir, root / name, seed) for seed, name in enumerate(("a", "b"), 1)}


def _logits(gen: TransformersGenerator) -> torch.Tensor:
    with torch.inference_mode():
        return gen.model(**gen.encode(MESSAGES)).logits


def _record_generate(gen: TransformersGenerator) -> list[torch.Tensor]:
    """Capture what `model.generate` returns (instance attribute shadows the method)."""
    outputs: list[torch.Tensor] = []
    original = gen.model.generate

    def wrapper(**kwargs: Any) -> torch.Tensor:
        result = original(**kwargs)
        outputs.append(result)
        return result

    gen.model.generate = wrapper
    return outputs


def _add_adapter_row(store: Store, version: str, path: Path, status: str = "promoted") -> None:
    store.insert("adapters", {"version": version, "path": str(path), "base_model": "tiny", "status": status,
                              "created_at": now(), "promoted_at": now() if status == "promoted" else None})
    time.sleep(0.002)  # distinct promoted_at timestamps (millisecond resolution)


# --- the local transformers backend -------------------------------------------------------------
def test_streams_and_stops_within_max_new_tokens(settings: Settings) -> None:
    gen = TransformersGenerator(settings)
    assert isinstance(gen, Generator)
    assert gen.name == settings.model and gen.adapter is None
    outputs = _record_generate(gen)
    prompt_len = gen.encode(MESSAGES)["input_ids"].shape[1]

    pieces = list(gen.stream(MESSAGES, max_new_tokens=8))

    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert outputs[0].shape[1] - prompt_len <= 8
    assert END_OF_TURN not in "".join(pieces)
    # greedy decoding (temperature 0) is deterministic; generate() joins the stream
    assert gen.generate(MESSAGES, max_new_tokens=8) == "".join(pieces)
    assert outputs[1].shape[1] - prompt_len <= 8


def test_default_max_new_tokens_comes_from_settings(settings: Settings) -> None:
    gen = TransformersGenerator(settings)
    outputs = _record_generate(gen)
    gen.generate(MESSAGES)
    assert outputs[0].shape[1] - gen.encode(MESSAGES)["input_ids"].shape[1] <= settings.max_new_tokens


def test_chat_template_applied(settings: Settings) -> None:
    gen = TransformersGenerator(settings)
    prompt = gen.tokenizer.decode(gen.encode(MESSAGES)["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nYou answer questions about the team handbook.<|im_end|>")
    assert "<|im_start|>user\nHow do I deploy?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_stops_at_end_of_turn(settings: Settings) -> None:
    gen = TransformersGenerator(settings)
    end_id = gen.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert end_id in gen._stop_ids

    def force_end(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        output[..., end_id] = 1e4  # the model "wants" to end its turn immediately
        return output

    handle = gen.base.lm_head.register_forward_hook(force_end)
    try:
        outputs = _record_generate(gen)
        text = gen.generate(MESSAGES, max_new_tokens=16)
    finally:
        handle.remove()
    assert text == ""
    assert outputs[0][0, -1].item() == end_id
    assert outputs[0].shape[1] == gen.encode(MESSAGES)["input_ids"].shape[1] + 1


def test_adapter_hot_swap_changes_and_restores_logits(settings: Settings, adapters: dict[str, Path]) -> None:
    gen = TransformersGenerator(settings)
    base = _logits(gen)

    assert gen.use_adapter(adapters["a"], "a")
    logits_a = _logits(gen)
    assert gen.adapter == "a"
    assert not torch.allclose(logits_a, base)

    assert gen.use_adapter(str(adapters["b"]), "b")
    logits_b = _logits(gen)
    assert gen.adapter == "b"
    assert not torch.allclose(logits_b, logits_a) and not torch.allclose(logits_b, base)
    assert list(gen.model.peft_config) == [gen._adapter_name]  # the old adapter was deleted
    assert gen.generate(MESSAGES, max_new_tokens=4) is not None

    assert gen.use_adapter(None, None)
    assert gen.adapter is None
    assert torch.allclose(_logits(gen), base)

    assert gen.use_adapter(adapters["a"], "a")  # and back again, from a clean base
    assert torch.allclose(_logits(gen), logits_a)


def test_answer_in_flight_finishes_on_old_weights(settings: Settings, adapters: dict[str, Path]) -> None:
    gen = TransformersGenerator(settings)
    expected = gen.generate(MESSAGES, max_new_tokens=12)
    # Slow each decoding step down so the answer is still running when the swap is requested.
    handle = gen.base.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    try:
        stream = gen.stream(MESSAGES, max_new_tokens=12)
        pieces = [next(stream)]
        swapper = threading.Thread(target=gen.use_adapter, args=(adapters["a"], "a"))
        swapper.start()
        time.sleep(0.15)
        assert swapper.is_alive(), "the swap must wait for the answer in flight"
        pieces += list(stream)
    finally:
        handle.remove()
    swapper.join(timeout=30)
    assert "".join(pieces) == expected  # the whole answer came from the base weights
    assert gen.adapter == "a"


def test_missing_or_corrupt_adapter_keeps_serving(settings: Settings, adapters: dict[str, Path],
                                                  tmp_path: Path) -> None:
    forced = settings.model_copy(update={"adapter": str(tmp_path / "nope")})
    gen = TransformersGenerator(forced)
    assert gen.adapter is None
    assert isinstance(gen.generate(MESSAGES, max_new_tokens=4), str)

    assert gen.use_adapter(adapters["a"], "a")
    good = _logits(gen)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text((adapters["a"] / "adapter_config.json").read_text())
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert not gen.use_adapter(corrupt, "broken")
    assert gen.adapter == "a" and torch.allclose(_logits(gen), good)
    assert isinstance(gen.generate(MESSAGES, max_new_tokens=4), str)


def test_promoted_adapter_from_store(settings: Settings, store: Store, adapters: dict[str, Path]) -> None:
    _add_adapter_row(store, "2024-01-01-a", adapters["a"])
    gen = TransformersGenerator(settings, store)
    assert gen.adapter == "2024-01-01-a"
    assert not gen.refresh_adapter()  # unchanged: nothing to do

    _add_adapter_row(store, "2024-01-02-b", adapters["b"])
    assert gen.refresh_adapter()
    assert gen.adapter == "2024-01-02-b"

    # a promoted adapter whose files are gone: warn once, keep serving, don't retry every answer
    _add_adapter_row(store, "2024-01-03-gone", settings.adapters_dir / "gone")
    assert not gen.refresh_adapter()
    assert gen.adapter == "2024-01-02-b"
    assert not gen.refresh_adapter()

    store.execute("UPDATE adapters SET status = 'retired'")
    assert gen.refresh_adapter()
    assert gen.adapter is None


def test_load_generator_picks_backend(settings: Settings) -> None:
    assert isinstance(load_generator(settings), TransformersGenerator)
    hosted = settings.model_copy(update={"backend": "anthropic"})
    assert isinstance(load_generator(hosted), AnthropicGenerator)


# --- hosted backends against loopback fakes -------------------------------------------------------
@contextmanager
def _fake_server(path: str, events: Callable[[dict], list[bytes]]) -> Iterator[tuple[str, list[dict]]]:
    """Serve `path` on 127.0.0.1:<free port>, answering POSTs with SSE frames; yields (base url, requests)."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            if self.path != path:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for frame in events(body):
                self.wfile.write(frame)
                self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _openai_events(body: dict) -> list[bytes]:
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        data = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n".encode()

    return [chunk({"role": "assistant", "content": ""}), chunk({"content": "Deploy "}),
            chunk({"content": "with make."}), chunk({}, "stop"), b"data: [DONE]\n\n"]


def test_openai_backend_streams(settings: Settings) -> None:
    with _fake_server("/v1/chat/completions", _openai_events) as (url, requests):
        s = settings.model_copy(update={"backend": "openai", "openai_base_url": f"{url}/v1",
                                        "openai_model": "smollm2"})
        gen = load_generator(s)
        assert isinstance(gen, OpenAIGenerator) and gen.name == "smollm2" and gen.adapter is None
        assert list(gen.stream(MESSAGES)) == ["Deploy ", "with make."]
        body = requests[-1]["body"]
        assert body["model"] == "smollm2" and body["stream"] is True
        assert body["messages"] == MESSAGES and body["max_tokens"] == settings.max_new_tokens
        assert requests[-1]["headers"]["authorization"] == "Bearer EMPTY"

        # a vLLM LoRA module is addressed by its name
        lora = OpenAIGenerator(s.model_copy(update={"adapter": "flywheel-v3"}))
        assert lora.generate(MESSAGES, max_new_tokens=5) == "Deploy with make."
        assert requests[-1]["body"]["model"] == "flywheel-v3" and lora.adapter == "flywheel-v3"
        assert requests[-1]["body"]["max_tokens"] == 5


def _anthropic_events(body: dict) -> list[bytes]:
    def event(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    return [
        event("message_start", {"message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": body["model"],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Run "}}),
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "`make deploy`."}}),
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": 5}}),
        event("message_stop", {}),
    ]


def test_anthropic_backend_streams(settings: Settings) -> None:
    with _fake_server("/v1/messages", _anthropic_events) as (url, requests):
        s = settings.model_copy(update={"backend": "anthropic", "anthropic_base_url": url,
                                        "anthropic_model": "claude-test",
                                        "anthropic_api_key": SecretStr("sk-test")})
        gen = load_generator(s)
        assert isinstance(gen, AnthropicGenerator) and gen.name == "claude-test" and gen.adapter is None
        assert list(gen.stream(MESSAGES)) == ["Run ", "`make deploy`."]
        assert gen.generate(MESSAGES, max_new_tokens=7) == "Run `make deploy`."
    request = requests[-1]
    headers = request["headers"]
    # anthropic SDK 2.x authenticates with `Authorization: Bearer`; 0.x used `x-api-key`
    assert headers.get("x-api-key") == "sk-test" or headers.get("authorization") == "Bearer sk-test"
    assert request["body"]["system"] == MESSAGES[0]["content"]
    assert request["body"]["messages"] == [MESSAGES[1]]
    assert request["body"]["model"] == "claude-test" and request["body"]["max_tokens"] == 7
    assert request["body"]["stream"] is True


# --- the real default model ------------------------------------------------------------------------
@pytest.mark.slow
def test_real_default_model_answers(tmp_path: Path) -> None:
    """Converts the bundled GGUF into a fresh home (tens of seconds), then answers a question."""
    s = Settings(home=tmp_path / "home", max_new_tokens=20)
    gen = TransformersGenerator(s)
    assert gen.name == "SmolLM2-135M-Instruct"
    assert (s.models_dir / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    text = gen.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert text.strip()
    assert not text.rstrip().endswith(END_OF_TURN) and END_OF_TURN not in text


def _reading_server(body: dict) -> list[bytes]:
    """An OpenAI-compatible model that reads: it answers with the first sentence of passage [1] of the
    agent's prompt, cited — what a good model's grounded answer looks like on the wire."""
    import re

    user = body["messages"][-1]["content"]
    passage = user.split("[1] ", 1)[1].split("\n", 1)[1].split("\n\n[2]", 1)[0]
    sentence = re.split(r"(?<=[.!?])\s+", " ".join(passage.split()))[0].rstrip(".")
    words = f"{sentence} [1].".split(" ")

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        data = {"id": "cmpl-2", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n".encode()

    return [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": w + (" " if i < len(words) - 1 else "")}) for i, w in enumerate(words)),
            chunk({}, "stop"), b"data: [DONE]\n\n"]


def test_eval_runs_through_an_openai_compatible_server(handbook_home, tmp_path) -> None:
    """`flywheel eval` with FLYWHEEL_BACKEND=openai (the vLLM seam): every question's prompt goes to the
    server, and its cited answers are checked and scored like the local model's — the comparison
    bench/compare_evals.py makes between the two backends (README: "A server instead of the local model")."""
    import shutil

    from agent.evaluate import run_eval
    from agent.graph import Agent
    from storage.samples import HERE

    home = tmp_path / "home"
    shutil.copytree(handbook_home, home)
    with _fake_server("/v1/chat/completions", _reading_server) as (url, requests):
        agent = Agent(Settings(home=home, backend="openai", openai_base_url=f"{url}/v1", openai_model="smollm2"))
        out = tmp_path / "server.jsonl"
        summary = run_eval(agent, HERE / "questions.jsonl", out=out, limit=3, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and len(requests) >= 3
    assert all(r["body"]["model"] == "smollm2" and r["body"]["messages"][0]["role"] == "system" for r in requests)
    assert all(r["produced_by"] == "model" and r["grounded"] and r["citations"] for r in rows), rows
    assert summary["produced_by_model"] == 1.0 and "accuracy" in summary
