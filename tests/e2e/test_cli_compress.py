"""``effstudio compress``: steps or a recipe in, the compressed model and its recipe out, the
numbers before and after; a bad request is one line on stderr, exit 2, and nothing written."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import effstudio.core.compress.testing  # noqa: F401  (registers testing.scale)
from effstudio.cli_compress import main, parse_value
from effstudio.core.compress.recipe import load_recipe


@pytest.fixture
def onnx_path(tiny_conv_net) -> str:
    return tiny_conv_net  # tests/e2e/conftest.py


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["compress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_steps_write_the_model_its_recipe_and_json(onnx_path, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code, stdout, err = _run(capsys, onnx_path, "--step", "testing.scale factor=0 layers=conv",
                             "--step", "testing.scale factor=0.5 layers=re:fc.*", "-o", out, "--json", "--no-measure")
    assert code == 0, err
    report = json.loads(stdout)
    assert set(report) >= {"before", "after", "fidelity", "accuracy", "steps", "expectations"}
    orig, new = _inits(onnx_path), _inits(out)
    assert not new["w"].any() and np.array_equal(new["b"], orig["b"])
    assert np.array_equal(new["fw"], orig["fw"] * np.float32(0.5))
    b, a = report["before"], report["after"]
    assert b["params"] == a["params"] == 16 * 27 + 16 + 160 + 10
    assert a["compressed_weight_bytes"] < b["compressed_weight_bytes"] and a["latency_ms"] is None
    assert report["fidelity"]["n_samples"] == 4 and report["fidelity"]["cosine"] < 1
    assert report["accuracy"] == {"before": None, "after": None}  # no labelled data for this model
    assert [s["layers"] for s in report["steps"]] == [["conv"], ["fc"]]
    assert report["expectations"][0] == {"technique": "testing.scale", "expected": "smaller-only", "met": True,
                                         "measured": report["expectations"][0]["measured"],
                                         "text": "zeroed weights compress well; dense kernels run as fast"}
    assert report["output"] == {"model": [str(out)], "recipe": str(out) + ".recipe.yaml"}
    recipe = load_recipe(str(out) + ".recipe.yaml")
    assert [(s.config, s.selection) for s in recipe.steps] == [({"factor": 0.0}, ["conv"]),
                                                               ({"factor": 0.5}, ["re:fc.*"])]
    assert len(recipe.model["sha256"]) == 64

    # the recipe reproduces the model bit for bit
    again = tmp_path / "again.onnx"
    code, _, err = _run(capsys, onnx_path, "--recipe", str(out) + ".recipe.yaml", "-o", again, "--no-measure")
    assert code == 0, err
    assert all(np.array_equal(v, _inits(again)[k]) for k, v in new.items())


def test_the_table_shows_before_after_and_latency(onnx_path, tmp_path, capsys):
    out = tmp_path / "t.onnx"
    code, stdout, err = _run(capsys, onnx_path, "--step", "testing.scale factor=0", "-o", out, "--budget", "0.05")
    assert code == 0, err
    lines = stdout.splitlines()
    for label in ("params", "weight bytes", "zipped weights", "MACs", "latency (median)", "fidelity (cosine)",
                  "top-1 agreement"):
        assert any(line.startswith(label) for line in lines), label
    lat = next(line for line in lines if line.startswith("latency (median)"))
    assert lat.count(" ms") == 2
    assert "step 1: testing.scale on 2 layers: expected smaller-only — met" in stdout
    assert f"wrote {out}" in stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--step", "testing.scale factor=0.5 layers=conv,relu,pool"],
     "step 1 (testing.scale): testing.scale does not apply to 2 selected layer(s): relu (has no weight matrix); "
     "pool (has no weight matrix)"),
    (["--step", "testing.scale factor=0.5 layers=nothing*"], "selection 'nothing*' matches no layer"),
    (["--step", "testing.scale factor=high"], "factor must be a number"),
    (["--step", "testing.scale colour=red"], "unknown setting(s) colour"),
    (["--step", "no.such.technique"], "unknown technique 'no.such.technique'"),
    (["--step", "testing.scale factor"], "expected key=value, got 'factor'"),
])
def test_bad_requests_write_nothing(onnx_path, tmp_path, capsys, argv, message):
    out = tmp_path / "out" / "x.onnx"
    code, stdout, err = _run(capsys, onnx_path, *argv, "-o", out, "--no-measure")
    assert code == 2 and stdout == ""
    assert err.startswith("effstudio compress: ") and message in err and err.count("\n") == 1
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_the_output_suffix_must_fit_the_model(onnx_path, tmp_path, capsys):
    code, _, err = _run(capsys, onnx_path, "--step", "testing.scale", "-o", tmp_path / "x.pt2", "--no-measure")
    assert code == 2 and "is an ONNX model, written as .onnx; name the output *.onnx" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_torch_model_is_written_as_pt2(tmp_path, capsys):
    from effstudio.core.loaders import open_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(6, 12)
            self.fc2 = torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(Net().eval(), (), kwargs={"x": torch.randn(2, 6)})
    src = tmp_path / "net.pt2"
    torch.export.save(ep, str(src))
    out = tmp_path / "small.pt2"
    code, stdout, err = _run(capsys, src, "--step", "testing.scale factor=2 layers=fc2", "-o", out,
                             "--json", "--no-measure")
    assert code == 0, err
    before, after = open_model(str(src)), open_model(str(out))
    assert after.format == "torch-export"
    sb, sa = before.exported.state_dict, after.exported.state_dict
    assert torch.equal(sa["fc2.weight"], 2 * sb["fc2.weight"]) and torch.equal(sa["fc1.weight"], sb["fc1.weight"])
    assert json.loads(stdout)["fidelity"]["cosine"] > 0  # the same direction, twice the length minus the bias


def test_parse_value():
    assert [parse_value(v) for v in ("3", "-2", "0.5", "1e-3", "true", "Off", "none", "abc")] == \
        [3, -2, 0.5, 0.001, True, False, None, "abc"]
    assert parse_value("1,2.5,x") == [1, 2.5, "x"] and parse_value("[4, 5]") == [4, 5] and parse_value("[]") == []


@pytest.mark.slow
def test_a_demo_model_reports_accuracy(tmp_path, capsys):
    out = tmp_path / "cnn.onnx"
    code, stdout, err = _run(capsys, "demo:cnn.onnx", "--step", "testing.scale factor=0.9", "-o", out,
                             "--json", "--no-measure")
    assert code == 0, err
    report = json.loads(stdout)
    acc = report["accuracy"]
    assert acc["before"]["n"] == acc["after"]["n"] == report["fidelity"]["n_samples"] > 200
    assert acc["before"]["top1"] >= 0.95 and acc["before"]["data"].startswith("digits test split")
    assert report["fidelity"]["top1_agreement"] > 0.9
    assert load_recipe(str(out) + ".recipe.yaml").model["path"] == "demo:cnn.onnx"
