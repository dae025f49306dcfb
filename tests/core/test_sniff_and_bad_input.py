"""Telling formats apart from bytes, and bad input: one clear line naming the file, never a traceback."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from effstudio import cli
from effstudio.core.errors import EffstudioError, ModelLoadError, UntrustedPickleError
from effstudio.core.loaders import open_model
from effstudio.core.loaders.sniff import sniff_format


class MakesMarker:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "code from an untrusted file ran"


@pytest.fixture()
def files(tmp_path):
    lin = nn.Linear(3, 2)
    ep = torch.export.export(lin, (torch.randn(1, 3),))
    torch.export.save(ep, tmp_path / "m.pt2")
    torch.jit.save(torch.jit.script(lin), tmp_path / "m_ts.pt")
    torch.save(lin.state_dict(), tmp_path / "sd.pt")
    torch.save(lin.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    return tmp_path


def test_sniff_torch_formats(files):
    assert sniff_format(files / "m.pt2") == "pt2"
    assert sniff_format(files / "m_ts.pt") == "torchscript"
    assert sniff_format(files / "sd.pt") == "torch-pickle"
    assert sniff_format(files / "legacy.pt") == "torch-pickle"
    # the bytes decide, not the name
    os.rename(files / "m_ts.pt", files / "renamed.onnx")
    assert sniff_format(files / "renamed.onnx") == "torchscript"


def test_sniff_hands_protobuf_and_unknown_binary_to_onnx(tmp_path):
    f = tmp_path / "x.onnx"
    f.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(range(256)))
    assert sniff_format(f) == "onnx"


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"),
    (b"hello, this is a README\n", "this is text"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "PNG image"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip"),
])
def test_sniff_refuses_foreign_files(tmp_path, content, message):
    f = tmp_path / "model.pt"
    f.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as e:
        sniff_format(f)
    assert e.value.path == str(f) and "expected .onnx" in str(e.value)


def test_sniff_zip_that_is_not_torch_and_truncated_zip(tmp_path, files):
    z = tmp_path / "notes.pt"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("notes/readme.txt", "hi")
    with pytest.raises(ModelLoadError, match="not a PyTorch one"):
        sniff_format(z)
    cut = tmp_path / "cut.pt2"
    cut.write_bytes((files / "m.pt2").read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="damaged or truncated"):
        sniff_format(cut)


def test_safetensors_alone_points_to_factory(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights only.*--weights w\.safetensors"):
        open_model(str(tmp_path / "w.safetensors"))


# --- pickles: refused, and nothing from them runs -------------------------------------------
def test_malicious_pickle_refused_and_not_run(tmp_path, marker):
    f = tmp_path / "evil.pt"
    torch.save({"model": MakesMarker(str(marker))}, f)
    with pytest.raises(UntrustedPickleError) as e:
        open_model(str(f))
    msg = str(e.value)
    assert msg.startswith(str(f)) and "runs code" in msg and "--trust" in msg and ".pt2" in msg
    assert "\n" not in msg


def test_malicious_legacy_pickle_refused(tmp_path, marker):
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps(MakesMarker(str(marker)), protocol=2))
    assert sniff_format(f) == "torch-pickle"
    with pytest.raises(UntrustedPickleError):
        open_model(str(f))


def test_malicious_weights_file_for_a_factory(tmp_path, marker, monkeypatch):
    (tmp_path / "eff_bad_factory.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Linear(2, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    w = tmp_path / "w.pt"
    torch.save({"weight": MakesMarker(str(marker))}, w)
    with pytest.raises(UntrustedPickleError, match="not a plain state dict"):
        open_model("eff_bad_factory:make", weights=str(w))


def test_pt2_with_a_malicious_pickle_inside_is_refused(files, marker):
    """torch.export.load falls back to weights_only=False for sample inputs: we must not get there."""
    src, dst = files / "m.pt2", files / "evil.pt2"
    evil = torch.serialization.io.BytesIO()
    torch.save((MakesMarker(str(marker)),), evil)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = evil.getvalue()
            zout.writestr(info, data)
    assert sniff_format(dst) == "pt2"
    with pytest.raises(UntrustedPickleError, match="sample_inputs"):
        open_model(str(dst))


def test_state_dict_file_says_it_needs_a_factory(files):
    with pytest.raises(ModelLoadError, match=r"a state dict \(2 tensors.*make_model --weights sd\.pt"):
        open_model(str(files / "sd.pt"))


def test_factory_that_does_not_import():
    with pytest.raises(ModelLoadError, match="cannot import no_such_pkg_xyz") as e:
        open_model("no_such_pkg_xyz.models:make")
    assert e.value.path == "no_such_pkg_xyz.models:make"


# --- the CLI: exit 2 and exactly one line on stderr naming the file ----------------------------
def _bad_files(tmp_path, files, marker):
    cut = tmp_path / "cut.pt2"
    cut.write_bytes((files / "m.pt2").read_bytes()[:300])
    rnd = tmp_path / "random.onnx"
    rnd.write_bytes(os.urandom(3000))
    empty = tmp_path / "empty.onnx"
    empty.touch()
    text = tmp_path / "notes.pt"
    text.write_text("not a model at all\n")
    evil = tmp_path / "evil.pt"
    torch.save(MakesMarker(str(marker)), evil)
    cut_ts = tmp_path / "cut_ts.pt"
    cut_ts.write_bytes((files / "m_ts.pt").read_bytes()[:-200])
    return [str(p) for p in (cut, rnd, empty, text, evil, cut_ts, tmp_path / "missing.onnx")] + [
        "no_such_pkg_xyz:make"]


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, files, marker, capsys):
    for spec in _bad_files(tmp_path, files, marker):
        rc = cli.main(["inspect", spec])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 2, (spec, err)
        assert len(lines) == 1, (spec, err)
        assert spec in lines[0], (spec, err)
        assert out == ""


def test_open_model_bad_inputs_raise_effstudio_errors(tmp_path, files, marker):
    for spec in _bad_files(tmp_path, files, marker):
        with pytest.raises(EffstudioError):
            open_model(spec)
