"""Retrieval latency at scale: p50/p95 of a full hybrid search (query embedding + Chroma + BM25 + RRF +
SQLite fetch) over N synthetic chunks.

    python bench/retrieval.py --chunks 10000 100000
    python bench/retrieval.py --chunks 1000000 --chroma-server     # vectors in a `chroma run` server

The chunks are synthetic prose from a fixed vocabulary and their vectors are random unit vectors (real
MiniLM embeddings of 100k chunks would take ~10 minutes here and don't change the index's speed); the
query goes through the real embedder. Quality is measured by `flywheel eval`, not here.
With `--chroma-server` the vectors live in a real `chroma run` server started here on a free port
(FLYWHEEL_CHROMA_HOST/PORT, the client/server mode a team outgrowing the embedded store uses); SQLite and
BM25 stay local as in that deployment. The card then also carries the server's resident memory.
It runs with OMP_WAIT_POLICY=PASSIVE unless set, as `flywheel` does (storage/hub.py: passive_openmp),
and records the load before measuring: on shared cores the numbers depend on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from report import add_report_argument, record

WORDS = (
    "deploy rollback canary cluster replica index query journal page cache latency budget expense invoice "
    "policy travel hotel flight oncall incident severity pager escalation handbook onboarding laptop "
    "account password token secret vacuum checkpoint transaction lock schema column table trigger view "
    "backup restore snapshot region zone network firewall proxy certificate renewal audit review "
    "approval manager budget quarter roadmap sprint release version feature flag metric alert dashboard"
).split()


def synthetic_text(rng: random.Random, words: int = 120) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


@contextlib.contextmanager
def chroma_server(data: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of `chroma run --path data` on a free loopback port, once its heartbeat answers."""
    binary = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (data.parent / "chroma.log").open("w")
    server = subprocess.Popen([binary, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"chroma run did not start: {(data.parent / 'chroma.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield port, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def build(home: Path, n: int, seed: int = 0, chroma_port: int | None = None):
    from storage.config import Settings
    from storage.index import IndexedChunk, embedding_text
    from storage.knowledge import KnowledgeBase

    settings = Settings(home=home)
    if chroma_port is not None:
        settings = Settings(home=home, chroma_host="127.0.0.1", chroma_port=chroma_port)
    kb = KnowledgeBase(settings)
    rng = random.Random(seed)
    docs = max(1, n // 100)
    rows = []
    for i in range(n):
        doc = f"doc{i % docs:05d}"
        rows.append({"id": f"{doc}-{i:07d}", "document_id": doc, "ord": i, "source": f"{doc}.md",
                     "page": None, "heading": f"Section {i % 17}", "text": synthetic_text(rng), "tokens": 150})
    kb.store.insert("documents", [{"id": f"doc{d:05d}", "path": f"/bench/doc{d:05d}.md", "name": f"doc{d:05d}.md",
                                   "status": "ok", "chunks": 100, "updated_at": "now"} for d in range(docs)])
    kb.store.insert("chunks", rows)
    vectors = np.random.default_rng(seed).standard_normal((n, kb.embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    kb.vectors.upsert([IndexedChunk(r["id"], r["document_id"], r["source"], None, r["heading"], r["text"])
                       for r in rows], vectors, batch=5000)
    kb.lexical.rebuild([(r["id"], r["source"], embedding_text(r["source"], r["heading"], r["text"])) for r in rows])
    return kb


def measure(kb, queries: int = 200, seed: int = 1) -> dict[str, float]:
    from agent.retrieval import Retriever

    retriever = Retriever(kb)
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "?" for _ in range(queries)]
    for text in texts[:10]:  # warm-up: model, HNSW and BM25 loaded
        retriever.search(text)
    latencies = []
    for text in texts:
        started = time.perf_counter()
        retriever.search(text)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chroma-server", action="store_true",
                        help="keep the vectors in a `chroma run` server started here (client/server mode)")
    add_report_argument(parser)
    args = parser.parse_args()
    # The same OpenMP setting as `flywheel` (bot/cli.py), before the embedder imports torch.
    from storage.hub import passive_openmp

    passive_openmp()
    for n in args.chunks:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            port = pid = None
            if args.chroma_server:
                port, pid = stack.enter_context(chroma_server(Path(tmp) / "server-data"))
            started = time.perf_counter()
            kb = build(Path(tmp) / "home", n, chroma_port=port)
            build_s = time.perf_counter() - started
            load_before = os.getloadavg()[0]
            result = {"chunks": n, "build_s": round(build_s, 1), **measure(kb, args.queries),
                      "load_1m_before": round(load_before, 2), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                      "chroma": "server" if args.chroma_server else "embedded"}
            if pid is not None:
                result["chroma_server_rss_mb"] = rss_mb(pid)
            print(json.dumps(result), flush=True)
            record("retrieval", result, args.report)


if __name__ == "__main__":
    main()
