"""The session store: every version of every compression session, crash-safe.

Layout (in ``data_dir()``: the platform's user data folder, ``EFFSTUDIO_DATA_DIR`` overrides)::

    sessions.db                         SQLite: tables sessions, versions
    sessions/<session id>/v<id>/        one folder per stored version, holding its model:
        model.onnx [+ model.onnx.data]  ONNX versions
        model.pt2                       torch versions (torch.export.save; see modelfile)

The original (v0) is not copied: the session names it by identity (the path and the sha256
of the file, or the demo name) and reopens it.

Nothing is lost, nothing is half-written:

1. a version's model is written into a temporary folder ``sessions/<sid>/.tmp-*`` and flushed;
2. one SQLite transaction (``BEGIN IMMEDIATE``: one writer at a time) picks the version id,
   renames the folder to ``v<id>`` and inserts the row; then commits.

A crash before 2 leaves a ``.tmp-*`` folder; a crash inside 2 leaves a ``v<id>`` folder with
no row.  Neither is ever read (a version exists only through its row) and both are removed
later (:meth:`Store.clean`, run when a store opens; folders younger than a minute are left
alone, they may belong to another process that is writing).  A row never exists without its
folder, since the folder is in place before the row commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.modelfile import fsync_files, write_model
from effstudio.core.errors import EffstudioError
from effstudio.core.model import LoadedModel

APP_NAME = "effstudio"
DATA_ENV = "EFFSTUDIO_DATA_DIR"
DB_NAME = "sessions.db"
SCHEMA_VERSION = 1
EXPORT_FORMAT = "effstudio-session"
ORPHAN_AGE_S = 60.0
CRASH_ENV = "EFFSTUDIO_STORE_CRASH_AT"  # test hook: kill this process at a named point of a write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    model_path TEXT NOT NULL,
    model_sha256 TEXT,
    model_format TEXT NOT NULL,
    spec TEXT NOT NULL,          -- JSON: how to reopen the original (spec, inputs, weights, data)
    created REAL NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    current INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_by_model ON sessions (model_path, model_sha256);
CREATE TABLE IF NOT EXISTS versions (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    id INTEGER NOT NULL,
    parent_id INTEGER,
    step TEXT,                   -- JSON of recipe.Step (with the resolved layers); NULL for v0
    numbers TEXT NOT NULL,       -- JSON: totals, latency, fidelity, accuracy, per-layer numbers ...
    model_file TEXT,             -- relative to the store folder; NULL for v0 (the original)
    created REAL NOT NULL,
    PRIMARY KEY (session_id, id)
);
"""


def data_dir() -> Path:
    """The user data folder (``EFFSTUDIO_DATA_DIR`` overrides the platform's)."""
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def _crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when ``EFFSTUDIO_STORE_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a session belongs to: a demo (by name) or a file/folder (absolute path + sha256)."""

    path: str
    sha256: str | None
    format: str

    @classmethod
    def of(cls, loaded: LoadedModel, spec: str | None = None) -> ModelIdentity:
        from effstudio.core.compress.evaluate import demo_name

        spec = spec or loaded.path
        demo = demo_name(loaded)
        if spec.startswith("demo:") or demo is not None:
            # a demo (or its exported copy in the cache) is named by the demo, and its shipped
            # weights' hash (reference demos have seeded weights: no file, no hash)
            name = spec if spec.startswith("demo:") else f"demo:{demo}{Path(loaded.path).suffix}"
            from effstudio.core.paths import demo_dir

            weights = demo_dir() / f"{name[5:].split('.')[0]}.safetensors"
            return cls(name, file_sha256(weights) if weights.is_file() else None, loaded.format)
        p = Path(spec)
        if p.is_file():
            return cls(str(p.resolve()), file_sha256(p), loaded.format)
        if p.is_dir():
            return cls(str(p.resolve()), _tree_sha256(p), loaded.format)
        return cls(spec, None, loaded.format)  # pkg.module:factory

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "sha256": self.sha256}


@dataclass
class SessionRow:
    id: str
    identity: ModelIdentity
    spec: dict[str, Any]
    created: float
    name: str
    current: int


@dataclass
class VersionRow:
    session_id: str
    id: int
    parent_id: int | None
    step: dict[str, Any] | None
    numbers: dict[str, Any]
    model_file: str | None
    created: float = field(default_factory=time.time)


class Store:
    """Sessions and versions in ``root`` (default :func:`data_dir`)."""

    def __init__(self, root: str | Path | None = None, *, clean: bool = True) -> None:
        self.root = Path(root) if root is not None else data_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sessions").mkdir(exist_ok=True)
        self.db_path = self.root / DB_NAME
        self._lock = threading.RLock()  # one connection, used from whichever thread runs a task
        try:
            self._conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30.0,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA synchronous = FULL")
            ver = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if ver > SCHEMA_VERSION:
                raise EffstudioError(f"{self.db_path}: made by a newer effstudio (schema {ver}; this one "
                                     f"reads {SCHEMA_VERSION})")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise EffstudioError(f"{self.db_path}: not a usable session database ({e})") from None
        if clean:
            self.clean()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _session_dir(self, session_id: str) -> Path:
        if not session_id or any(c not in "0123456789abcdef" for c in session_id):
            raise EffstudioError(f"not a session id: {session_id!r}")
        return self.root / "sessions" / session_id

    # --- sessions -------------------------------------------------------------------------
    def create_session(self, identity: ModelIdentity, spec: dict[str, Any] | None = None, name: str = "",
                       root_numbers: dict[str, Any] | None = None) -> str:
        """A new session with its v0 (the original, whose numbers are ``root_numbers``)."""
        sid = uuid.uuid4().hex[:16]
        now = time.time()
        with self._write() as c:
            c.execute("INSERT INTO sessions (id, model_path, model_sha256, model_format, spec, created, name, "
                      "current) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                      (sid, identity.path, identity.sha256, identity.format, json.dumps(spec or {}), now, name))
            c.execute("INSERT INTO versions (session_id, id, parent_id, step, numbers, model_file, created) "
                      "VALUES (?, 0, NULL, NULL, ?, NULL, ?)", (sid, json.dumps(root_numbers or {}), now))
        return sid

    def _session_row(self, r: tuple) -> SessionRow:
        return SessionRow(r[0], ModelIdentity(r[1], r[2], r[3]), json.loads(r[4]), r[5], r[6], r[7])

    _SESSION_COLS = "id, model_path, model_sha256, model_format, spec, created, name, current"

    def session(self, session_id: str) -> SessionRow:
        rows = self._query(f"SELECT {self._SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        r = rows[0] if rows else None
        if r is None:
            raise EffstudioError(f"{self.db_path}: no session {session_id!r}")
        return self._session_row(r)

    def sessions(self) -> list[SessionRow]:
        rows = self._query(f"SELECT {self._SESSION_COLS} FROM sessions ORDER BY created DESC")
        return [self._session_row(r) for r in rows]

    def sessions_for(self, identity: ModelIdentity) -> list[SessionRow]:
        """Earlier sessions on the same model (same path and content), newest first."""
        rows = self._query(
            f"SELECT {self._SESSION_COLS} FROM sessions WHERE model_path = ? AND model_sha256 IS ? "
            "ORDER BY created DESC", (identity.path, identity.sha256))
        return [self._session_row(r) for r in rows]

    def rename_session(self, session_id: str, name: str) -> None:
        with self._write() as c:
            c.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session_id))

    def set_current(self, session_id: str, version_id: int) -> None:
        with self._write() as c:
            c.execute("UPDATE sessions SET current = ? WHERE id = ?", (int(version_id), session_id))

    def delete_session(self, session_id: str) -> None:
        """Remove the rows (one transaction), then the files."""
        folder = self._session_dir(session_id)
        with self._write() as c:
            c.execute("DELETE FROM versions WHERE session_id = ?", (session_id,))
            c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        shutil.rmtree(folder, ignore_errors=True)

    # --- versions -------------------------------------------------------------------------
    def versions(self, session_id: str) -> list[VersionRow]:
        rows = self._query(
            "SELECT session_id, id, parent_id, step, numbers, model_file, created FROM versions "
            "WHERE session_id = ? ORDER BY id", (session_id,))
        return [VersionRow(r[0], r[1], r[2], json.loads(r[3]) if r[3] else None, json.loads(r[4]), r[5], r[6])
                for r in rows]

    def add_version(self, session_id: str, parent_id: int, step: dict[str, Any], numbers: dict[str, Any],
                    model: LoadedModel) -> VersionRow:
        """Store a new version: its model file first (temporary folder, flushed), then in one
        transaction the id, the folder's final name and the row."""
        sdir = self._session_dir(session_id)
        sdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=sdir))
        try:
            files = write_model(model, tmp)
            fsync_files(files)
            _crash_point("model-written")
            now = time.time()
            with self._write() as c:
                vid = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM versions WHERE session_id = ?",
                                (session_id,)).fetchone()[0]
                final = sdir / f"v{vid}"
                if final.exists():  # left by a crash inside an earlier transaction: it has no row
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _crash_point("model-moved")
                rel = (final / files[0].name).relative_to(self.root).as_posix()
                c.execute("INSERT INTO versions (session_id, id, parent_id, step, numbers, model_file, created) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (session_id, vid, parent_id, json.dumps(step), json.dumps(numbers), rel, now))
                c.execute("UPDATE sessions SET current = ? WHERE id = ?", (vid, session_id))
                _crash_point("row-inserted")
            return VersionRow(session_id, vid, parent_id, step, numbers, rel, now)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def update_numbers(self, session_id: str, version_id: int, numbers: dict[str, Any]) -> None:
        with self._write() as c:
            c.execute("UPDATE versions SET numbers = ? WHERE session_id = ? AND id = ?",
                      (json.dumps(numbers), session_id, int(version_id)))

    def model_path(self, row: VersionRow) -> Path | None:
        return self.root / row.model_file if row.model_file else None

    # --- housekeeping ---------------------------------------------------------------------
    def clean(self, min_age_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Remove folders no row points at (left by a crash); return what was removed."""
        known: dict[str, set[str]] = {}
        for sid, mf in self._query("SELECT session_id, model_file FROM versions"):
            known.setdefault(sid, set())
            if mf:
                known[sid].add(mf.split("/")[2])
        removed = []
        now = time.time()
        for sdir in (self.root / "sessions").iterdir():
            if not sdir.is_dir():
                continue
            for entry in sdir.iterdir():
                if entry.name in known.get(sdir.name, set()):
                    continue
                try:
                    if now - entry.stat().st_mtime < min_age_s:
                        continue
                except OSError:
                    continue
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
            if sdir.name not in known and not any(sdir.iterdir()):
                with contextlib.suppress(OSError):
                    sdir.rmdir()
        return removed

    # --- export / import ------------------------------------------------------------------
    def export_session(self, session_id: str, path: str | Path) -> Path:
        """Write the session (rows as JSON, model files) to one zip file, atomically."""
        path = Path(path)
        info = self.session(session_id)
        rows = self.versions(session_id)
        doc = {"format": EXPORT_FORMAT, "version": SCHEMA_VERSION,
               "session": {"id": info.id, "identity": info.identity.to_dict(), "spec": info.spec,
                           "created": info.created, "name": info.name, "current": info.current},
               "versions": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
                for r in rows:
                    files = []
                    if r.model_file:
                        folder = (self.root / r.model_file).parent
                        for f in sorted(folder.iterdir()):
                            z.write(f, f"models/v{r.id}/{f.name}")
                            files.append(f.name)
                    doc["versions"].append({"id": r.id, "parent_id": r.parent_id, "step": r.step,
                                            "numbers": r.numbers, "created": r.created,
                                            "model_file": Path(r.model_file).name if r.model_file else None,
                                            "files": files})
                z.writestr("session.json", json.dumps(doc))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def import_session(self, path: str | Path) -> str:
        """Add the session in an exported zip as a new session; returns its id."""
        path = Path(path)
        try:
            z = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise EffstudioError(f"{path}: no such file") from None
        except (OSError, zipfile.BadZipFile) as e:
            raise EffstudioError(f"{path}: not an exported effstudio session ({e})") from None
        with z:
            try:
                doc = json.loads(z.read("session.json"))
                if doc.get("format") != EXPORT_FORMAT:
                    raise ValueError("not an effstudio session export")
                if int(doc.get("version", 0)) > SCHEMA_VERSION:
                    raise ValueError(f"made by a newer effstudio (version {doc.get('version')})")
                s = doc["session"]
                ident = ModelIdentity(str(s["identity"]["path"]), s["identity"].get("sha256"),
                                      str(s["identity"]["format"]))
                versions = doc["versions"]
                ids = {int(v["id"]) for v in versions}
                if 0 not in ids:
                    raise ValueError("no original version (v0)")
            except (KeyError, ValueError, TypeError) as e:
                raise EffstudioError(f"{path}: not an exported effstudio session ({e})") from None
            sid = uuid.uuid4().hex[:16]
            sdir = self._session_dir(sid)
            staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root / "sessions"))
            try:
                for v in versions:
                    for name in v.get("files") or []:
                        if "/" in name or "\\" in name or name in ("", ".", ".."):
                            raise EffstudioError(f"{path}: bad file name {name!r} in the export")
                        target = staging / f"v{int(v['id'])}" / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(f"models/v{int(v['id'])}/{name}") as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                        fsync_files([target])
                with self._write() as c:
                    os.replace(staging, sdir)
                    c.execute("INSERT INTO sessions (id, model_path, model_sha256, model_format, spec, created, "
                              "name, current) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (sid, ident.path, ident.sha256, ident.format, json.dumps(s.get("spec") or {}),
                               float(s.get("created", time.time())), str(s.get("name", "")),
                               int(s.get("current", 0))))
                    for v in versions:
                        mf = v.get("model_file")
                        rel = (sdir / f"v{int(v['id'])}" / mf).relative_to(self.root).as_posix() if mf else None
                        if rel and not (self.root / rel).is_file():
                            raise EffstudioError(f"{path}: the model file of v{v['id']} is missing")
                        c.execute("INSERT INTO versions (session_id, id, parent_id, step, numbers, model_file, "
                                  "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (sid, int(v["id"]), v.get("parent_id"), json.dumps(v["step"]) if v.get("step")
                                   else None, json.dumps(v.get("numbers") or {}), rel,
                                   float(v.get("created", time.time()))))
            except KeyError as e:
                shutil.rmtree(sdir, ignore_errors=True)
                raise EffstudioError(f"{path}: the export lacks {e}") from None
            except BaseException:
                shutil.rmtree(sdir, ignore_errors=True)
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return sid


def require_model_file(store: Store, row: VersionRow) -> Path:
    p = store.model_path(row)
    if p is None or not p.is_file():
        raise CompressError(f"version v{row.id}: its model file is missing from {store.root}")
    return p
