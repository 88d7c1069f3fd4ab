"""The adapter registry: which LoRA adapters exist, which one serves, and how that changes.

    flywheel adapters                      # list versions with status and metrics
    flywheel promote v0003                 # serve v0003 from the next answer on
    flywheel rollback                      # back to the previously promoted version

An adapter version `vNNNN` is a folder under `settings.adapters_dir` plus a row in the `adapters`
table with status candidate → promoted → retired, or rejected. SQLite is the source of truth:
a promotion flips the old promoted row to "retired" and the new one to "promoted" in one
transaction, so no reader ever sees zero or two promoted adapters. `adapters/CURRENT` mirrors the
promoted version for humans and shell scripts (written temp-then-rename, so never half-written).
The running bot notices the change itself: `TransformersGenerator.refresh_adapter()` compares
`store.promoted_adapter()` before every answer and hot-swaps; an answer in flight finishes on the
weights it started with. Every change is written to the audit log.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from storage.config import Settings
from storage.db import Store, _json, now

STATUSES = ("candidate", "promoted", "retired", "rejected")
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, ...)."""


def record_from_row(cls: type, row: dict[str, Any]) -> Any:
    """A registry record (AdapterRecord, RetrieverRecord) from its table row: required columns as stored,
    JSON columns decoded when the row still holds their text, a missing or empty one its field's default."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING:
            values[f.name] = row[f.name]
            continue
        value = row.get(f.name)
        if f.default_factory is not MISSING:  # config, data_counts, losses, metrics: JSON in SQLite
            value = (json.loads(value) if isinstance(value, str) else value) or f.default_factory()
        values[f.name] = f.default if value is None else value
    return cls(**values)


@dataclass
class AdapterRecord:
    version: str
    path: str
    base_model: str
    status: str
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data_counts: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    promoted_at: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AdapterRecord:
        return record_from_row(cls, row)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1].get("loss") if self.losses else None


def list_adapters(store: Store, status: str | None = None) -> list[AdapterRecord]:
    """Every registered adapter, newest version first."""
    return [AdapterRecord.from_row(r) for r in store.adapters(status)]


def get_adapter(store: Store, version: str) -> AdapterRecord:
    row = store.adapter(version)
    if row is None:
        raise RegistryError(f"no adapter {version!r}; known: {[a.version for a in list_adapters(store)] or 'none'}")
    return AdapterRecord.from_row(row)


def current(store: Store) -> AdapterRecord | None:
    row = store.promoted_adapter()
    return AdapterRecord.from_row(row) if row else None


def next_free_version(prefix: str, registered: Iterable[str], folder: Path) -> str:
    """The next free `<prefix>NNNN`, above every registered version and every folder in `folder` (a crashed
    run leaves a folder without a row; its number is not reused). Adapters are vNNNN, retrievers rNNNN."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d{{4,}})$")
    numbers = [int(m.group(1)) for version in registered if (m := pattern.match(version))]
    if folder.is_dir():
        numbers += [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return f"{prefix}{max(numbers, default=0) + 1:04d}"


def next_version(settings: Settings, store: Store) -> str:
    """The next free adapter version `vNNNN` (see next_free_version)."""
    return next_free_version("v", [a["version"] for a in store.adapters()], settings.adapters_dir)


def register(
    settings: Settings,
    store: Store,
    *,
    version: str,
    path: str | Path,
    base_model: str,
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
    data_counts: dict[str, Any] | None = None,
    losses: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    actor: str = "training",
) -> AdapterRecord:
    """Add a trained adapter as a "candidate" (it serves nothing until promoted)."""
    if not _VERSION.match(version):
        raise RegistryError(f"adapter versions look like v0001, not {version!r}")
    if store.adapter(version) is not None:
        raise RegistryError(f"adapter {version} is already registered")
    if not (Path(path) / "adapter_config.json").is_file():
        raise RegistryError(f"{path} holds no adapter (adapter_config.json missing)")
    row = {
        "version": version, "path": str(path), "base_model": base_model, "status": "candidate", "run_id": run_id,
        "config": _json(config or {}), "data_counts": _json(data_counts or {}), "losses": _json(losses or []),
        "metrics": _json(metrics or {}), "created_at": now(), "promoted_at": None,
    }
    store.add_adapter(row)
    store.audit(actor, "adapter.register", {"version": version, "path": str(path), "run_id": run_id})
    return get_adapter(store, version)


def set_metrics(store: Store, version: str, metrics: dict[str, Any]) -> None:
    """Replace the adapter's evaluation results (the gate's report)."""
    store.update_adapter(version, metrics=metrics)


def promote(settings: Settings, store: Store, version: str, actor: str, *, force: bool = False) -> AdapterRecord:
    """Make `version` the served adapter; the previously promoted one becomes "retired".

    A rejected adapter is only promoted with `force=True` (an admin overriding the gate).
    """
    record = get_adapter(store, version)
    if record.status == "promoted":
        return record
    if record.status == "rejected" and not force:
        raise RegistryError(f"{version} was rejected by the eval gate; promote it with force=True to override")
    if not (Path(record.path) / "adapter_config.json").is_file():
        raise RegistryError(f"{version}: adapter folder {record.path} is missing or incomplete")
    previous = current(store)
    store.promote_adapter(version)
    write_pointer(settings, version)
    store.audit(actor, "adapter.promote", {"version": version, "previous": previous.version if previous else None,
                                           "forced": force and record.status == "rejected"})
    return get_adapter(store, version)


def rollback(settings: Settings, store: Store, actor: str) -> AdapterRecord:
    """Re-promote the adapter that was promoted before the current one."""
    now_serving = current(store)
    earlier = [
        a for a in list_adapters(store, "retired")
        if a.promoted_at and (now_serving is None or a.version != now_serving.version)
    ]
    if not earlier:
        raise RegistryError("nothing to roll back to: no adapter was promoted before "
                            f"{now_serving.version if now_serving else 'the base model'}")
    target = max(earlier, key=lambda a: a.promoted_at or "")
    # The rolled-back adapter is marked bad, so a later rollback doesn't bring it back.
    store.promote_adapter(target.version, reject=now_serving.version if now_serving is not None else None)
    write_pointer(settings, target.version)
    store.audit(actor, "adapter.rollback", {"from": now_serving.version if now_serving else None,
                                            "to": target.version})
    return get_adapter(store, target.version)


def reject(settings: Settings, store: Store, version: str, actor: str, reason: str = "") -> AdapterRecord:
    """Mark a candidate as not fit to serve (the gate's verdict, or an admin's)."""
    record = get_adapter(store, version)
    if record.status == "promoted":
        raise RegistryError(f"{version} is serving; roll back or promote another version first")
    store.update_adapter(version, status="rejected")
    store.audit(actor, "adapter.reject", {"version": version, "reason": reason})
    return get_adapter(store, version)


def write_pointer(settings: Settings, version: str | None) -> Path:
    """`adapters/CURRENT` ← version (empty = base model), atomically: write a temp file, fsync, rename."""
    settings.adapters_dir.mkdir(parents=True, exist_ok=True)
    target = settings.adapters_dir / "CURRENT"
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=settings.adapters_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write((version or "") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_pointer(settings: Settings) -> str | None:
    path = settings.adapters_dir / "CURRENT"
    if not path.is_file():
        return None
    return path.read_text().strip() or None
