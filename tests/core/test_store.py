"""The session store: versions survive reopening, a crash mid-write leaves it consistent,
sessions export to one file and import back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile

import pytest
from compress_models import same_weights, tiny_onnx, tiny_onnx_file

from effstudio.core.compress.session import Session
from effstudio.core.compress.store import CRASH_ENV, DATA_ENV, ModelIdentity, Store, data_dir
from effstudio.core.errors import EffstudioError
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Progress

_CHILD = """
import sys
from pathlib import Path
import effstudio.core.compress.testing
from effstudio.core.compress.session import Session
from effstudio.core.compress.store import Store
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Progress
root, sid, model = sys.argv[1:]
store = Store(root, clean=False)
original = load_onnx(Path(model), inputs={}, progress=Progress())
session = Session.open(store, sid, original, measure=False)
session.apply("testing.scale", {"factor": 0.25}, ["fc"])
print("applied")
"""


def _consistent(store: Store, sid: str) -> list[int]:
    """Every row's model file exists and loads; returns the version ids."""
    rows = store.versions(sid)
    for r in rows:
        if r.id:
            assert store.model_path(r).is_file()
    return [r.id for r in rows]


def test_versions_persist_and_sessions_are_found_by_model(tmp_path):
    model_file = tiny_onnx_file(tmp_path / "m")
    original = load_onnx(model_file, inputs={}, progress=Progress())
    store = Store(tmp_path / "store")
    s = Session(original, store, measure=False, name="first try")
    v1 = s.apply("testing.scale", {"factor": 0.0}, ["conv"])
    rows = store.versions(s.id)
    assert [r.id for r in rows] == [0, 1] and rows[0].model_file is None
    assert rows[1].model_file == f"sessions/{s.id}/v1/model.onnx"
    assert rows[1].step["layers"] == ["conv"] and rows[1].numbers["totals"] == v1.numbers["totals"]
    ident = ModelIdentity.of(original)
    assert ident.path == str(model_file.resolve()) and len(ident.sha256) == 64
    found = store.sessions_for(ident)
    assert [(f.id, f.name, f.current) for f in found] == [(s.id, "first try", 1)]
    assert store.sessions_for(ModelIdentity(ident.path, "0" * 64, "onnx")) == []
    store.close()

    again = Store(tmp_path / "store")
    reopened = Session.open(again, s.id, original, measure=False)
    assert reopened.current_id == 1
    assert same_weights(reopened.current.model, v1.model)
    again.delete_session(s.id)
    assert again.sessions() == [] and not (tmp_path / "store" / "sessions" / s.id).exists()


@pytest.mark.parametrize("point", ["model-written", "model-moved", "row-inserted"])
def test_a_process_killed_mid_step_leaves_a_consistent_store(tmp_path, point):
    model_file = tiny_onnx_file(tmp_path / "m")
    original = load_onnx(model_file, inputs={}, progress=Progress())
    root = tmp_path / "store"
    store = Store(root)
    s = Session(original, store, measure=False)
    v1 = s.apply("testing.scale", {"factor": 0.5}, ["conv"])
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), s.id, str(model_file)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "applied" not in proc.stdout

    store = Store(root, clean=False)
    assert _consistent(store, s.id) == [0, 1]  # the killed step left no row
    assert store.session(s.id).current == 1
    sdir = root / "sessions" / s.id
    leftovers = sorted(p.name for p in sdir.iterdir() if p.name != "v1")
    assert len(leftovers) == 1  # a .tmp-* folder, or a v2 folder without its row
    assert leftovers[0].startswith(".tmp-") if point == "model-written" else leftovers[0] == "v2"
    reopened = Session.open(store, s.id, original, measure=False)  # earlier versions load
    assert same_weights(reopened.versions[1].model, v1.model)
    if point == "row-inserted":
        # the orphan v2 folder is replaced by the next version 2 (its row never committed)
        v2 = reopened.apply("testing.scale", {"factor": 0.25}, ["fc"])
        assert v2.id == 2 and _consistent(store, s.id) == [0, 1, 2]
    else:
        assert [p.name for p in store.clean(min_age_s=0)] == leftovers
        assert sorted(p.name for p in sdir.iterdir()) == ["v1"]
    assert store.clean() == []  # nothing young is removed (it might be another process's write)


def test_export_and_import_a_session(tmp_path):
    original = tiny_onnx(tmp_path / "m")
    store = Store(tmp_path / "a")
    s = Session(original, store, measure=False, name="to share")
    s.apply("testing.scale", {"factor": 0.5}, ["conv"])
    s.checkout(0)
    s.apply("testing.scale", {"factor": 2.0}, ["fc"])
    out = store.export_session(s.id, tmp_path / "shared" / "session.effsession")
    assert [p.name for p in out.parent.iterdir()] == ["session.effsession"]  # no temp file left
    with zipfile.ZipFile(out) as z:
        assert {"session.json", "models/v1/model.onnx", "models/v2/model.onnx"} <= set(z.namelist())

    other = Store(tmp_path / "b")
    sid = other.import_session(out)
    assert sid != s.id and other.session(sid).name == "to share"
    imported = Session.open(other, sid, original, measure=False)
    assert {v.id: v.parent_id for v in imported.versions.values()} == {0: None, 1: 0, 2: 0}
    assert imported.current_id == 2
    for vid in (1, 2):
        assert imported.versions[vid].numbers == s.versions[vid].numbers
        assert same_weights(imported.versions[vid].model, s.versions[vid].model)

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("session.json", '{"format": "something else"}')
    with pytest.raises(EffstudioError, match="not an exported effstudio session"):
        other.import_session(bad)
    assert [x.id for x in other.sessions()] == [sid]


def test_a_damaged_database_is_one_clear_error(tmp_path):
    (tmp_path / "sessions.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EffstudioError, match=r"sessions\.db: not a usable session database"):
        Store(tmp_path)


def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    store = Store()
    assert store.db_path == tmp_path / "data" / "sessions.db" and store.db_path.is_file()
