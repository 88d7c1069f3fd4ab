"""One process owns the embedded Chroma store; several share a Chroma server.

Chroma's embedded PersistentClient is not safe across processes, so the first process to open it holds an
advisory lock in the Chroma folder (storage/index.py `claim_chroma`) and any other gets a clear error. With
FLYWHEEL_CHROMA_HOST (a real `chroma run` server, started here) two processes ingest and search at once and
nothing is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from storage.config import Settings
from storage.index import ChromaBusyError, chroma_client, claim_chroma

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment for a child: offline hub, the project importable, no developer settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "SLACK_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])), **extra)
    return env


def _python(code: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=str(ROOT), env=_env(**env),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# An owner that is not this test's process: a child of the owner shares its store (the cycle's training and
# gate processes), so the second process must be the owner's sibling, as `flywheel ingest` is the bot's.
OWNER = """
    import sys
    from pathlib import Path
    from storage.config import Settings
    from storage.index import chroma_client
    chroma_client(Settings(home=Path(sys.argv[1]))).get_or_create_collection("chunks")
    print("owning", flush=True)
    sys.stdin.read()  # hold the store until the test closes our stdin
"""

SECOND = """
    import sys
    from pathlib import Path
    from storage.config import Settings
    from storage.index import ChromaBusyError, chroma_client
    try:
        chroma_client(Settings(home=Path(sys.argv[1])))
    except ChromaBusyError as exc:
        print("busy:", exc)
    else:
        print("opened")
"""


def test_a_second_process_gets_a_clear_error_while_another_owns_the_embedded_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    owner = _python(OWNER, str(home))
    try:
        assert owner.stdout.readline().strip() == "owning", owner.stderr.read()
        second = subprocess.run([sys.executable, "-c", textwrap.dedent(SECOND), str(home)], cwd=str(ROOT),
                                env=_env(), capture_output=True, text=True, timeout=120)
        message = second.stdout
        assert message.startswith("busy:"), (second.stdout, second.stderr)
        assert f"pid {owner.pid}" in message  # who owns it
        assert "FLYWHEEL_CHROMA_HOST" in message and f"chroma run --path {home / 'chroma'}" in message

        # The CLI refuses before doing any work, with the same explanation and exit code 2.
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "a.md").write_text("# A\n\nSome text.\n")
        cli = subprocess.run([sys.executable, "-m", "bot.cli", "ingest", str(docs)], cwd=str(ROOT),
                             env=_env(FLYWHEEL_HOME=str(home), COLUMNS="400"), capture_output=True, text=True,
                             timeout=120)
        assert cli.returncode == 2, (cli.stdout, cli.stderr)
        assert "Cannot run `flywheel ingest`" in cli.stderr and "FLYWHEEL_CHROMA_HOST" in cli.stderr
    finally:
        owner.stdin.close()
        owner.wait(timeout=60)
    # Once the owner has exited (the kernel drops its lock, even after a crash), another process may own it.
    again = subprocess.run([sys.executable, "-c", textwrap.dedent(SECOND), str(home)], cwd=str(ROOT),
                           env=_env(), capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "opened", (again.stdout, again.stderr)


def test_the_owner_and_its_children_share_the_store_and_a_server_needs_no_lock(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    chroma_client(settings)  # this process owns it now
    claim_chroma(settings)  # again: free
    # A child of the owner (training, the gate) shares it: the owner waits for it.
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(SECOND), str(settings.home)], cwd=str(ROOT),
                           env=_env(), capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "opened", (child.stdout, child.stderr)
    owner = json.loads((settings.chroma_dir / "flywheel-owner.lock").read_text())
    assert owner["pid"] == os.getpid()
    # With a server configured nothing is locked (claim returns without touching the folder).
    claim_chroma(Settings(home=tmp_path / "other", chroma_host="localhost"))
    assert not (tmp_path / "other" / "chroma" / "flywheel-owner.lock").exists()
    assert issubclass(ChromaBusyError, RuntimeError)


# --- a real Chroma server ------------------------------------------------------------------------------
def _chroma_binary() -> str | None:
    beside = Path(sys.executable).with_name("chroma")  # installed with chromadb in the same environment
    return str(beside) if beside.is_file() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path: Path):
    """`chroma run --path … --port …` on a free port, once its heartbeat answers; stopped afterwards."""
    binary = _chroma_binary()
    if binary is None:
        if os.environ.get("CI_REQUIRE_CHROMA_SERVER"):
            pytest.fail("the chroma CLI (installed with chromadb) is missing")
        pytest.skip("the chroma CLI (installed with chromadb) is not on this machine")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen([binary, "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
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
                pytest.fail(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# Each worker ingests its own documents one by one and, between files, searches for the documents of both
# workers ingested so far, while the other worker does the same: one SQLite file, one Chroma server.
WORKER = """
    import json, sys, time
    from pathlib import Path
    from storage.config import Settings
    from storage.knowledge import KnowledgeBase
    home, port, name, go = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    kb = KnowledgeBase(Settings(home=home, chroma_host="127.0.0.1", chroma_port=port))
    kb.dense  # load the embedder before the start line
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.02)
    found = {}
    for path in sorted((home.parent / name).glob("*.md")):
        report = kb.ingest([path])
        assert not report.failed, report.failed
        hits = kb.dense.search(path.read_text().splitlines()[2], 3)
        found[path.stem] = [cid for cid, _ in hits]
    print(json.dumps(found), flush=True)
"""

WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "harbor", "indigo", "juniper"]


def test_two_processes_ingest_and_search_at_once_through_a_chroma_server(tmp_path: Path, chroma_server: int) -> None:
    home, go = tmp_path / "home", tmp_path / "go"
    for worker in ("left", "right"):
        folder = tmp_path / worker
        folder.mkdir()
        for i, word in enumerate(WORDS[:5] if worker == "left" else WORDS[5:]):
            (folder / f"{worker}-{word}.md").write_text(
                f"# {word.title()} procedure\n\n{word.title()} {worker} procedure {i}: the {word} valve opens "
                f"after the {word} check, never before.\n\n## Notes\n\nThe {word} team owns step {i}.\n")
    workers = [_python(WORKER, str(home), str(chroma_server), name, str(go)) for name in ("left", "right")]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()[-3000:]
        go.touch()  # both start ingesting together
        results = []
        for worker in workers:
            out, errors = worker.communicate(timeout=300)
            assert worker.returncode == 0, errors[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    import chromadb

    from storage.db import Store
    from storage.index import LexicalIndex

    settings = Settings(home=home, chroma_host="127.0.0.1", chroma_port=chroma_server)
    store = Store(settings.db_path)
    try:
        docs = store.query("SELECT name, chunks, status FROM documents")
        assert sorted(d["name"] for d in docs) == sorted(f"{w}-{x}.md" for w in ("left", "right")
                                                         for x in (WORDS[:5] if w == "left" else WORDS[5:]))
        assert all(d["status"] == "ok" and d["chunks"] > 0 for d in docs)
        chunk_ids = {r["id"] for r in store.query("SELECT id FROM chunks")}
    finally:
        store.close()
    assert len(chunk_ids) == sum(d["chunks"] for d in docs)
    # Every chunk's vector reached the server, and BM25 (rebuilt by both, one at a time) has every chunk.
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server)
    assert set(client.get_collection("chunks").get(include=[])["ids"]) == chunk_ids
    lexical = LexicalIndex(settings)
    assert {cid for cid, _ in lexical.query(" ".join(WORDS), 1000)} == chunk_ids
    # Each worker found each document it had just ingested, while the other was writing.
    from storage.knowledge import document_id

    for name, found in zip(("left", "right"), results):
        assert len(found) == 5
        for stem, hits in found.items():
            doc = document_id(tmp_path / name / f"{stem}.md")
            assert any(cid.startswith(doc) for cid in hits), (name, stem, hits)
