"""``effstudio profile``: the readable table, the JSON contract, and one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from effstudio.cli import main

LAYER_KEYS = {"name", "op_type", "scope", "inputs", "outputs", "output_shapes", "params", "weight_bytes",
              "macs", "flops", "activation_bytes", "latency_ms", "latency_share"}


@pytest.fixture
def model_path(tiny_conv_net) -> str:
    return tiny_conv_net  # tests/e2e/conftest.py


def _check_contract(out: dict, layer_names: list[str] | None = None) -> None:
    assert {"model", "inputs", "outputs", "layers", "edges", "totals", "uncounted_ops", "environment",
            "latency"} <= set(out)
    for lay in out["layers"]:
        assert set(lay) >= LAYER_KEYS, set(LAYER_KEYS) - set(lay)
        assert lay["latency_ms"] is None or lay["latency_ms"] >= 0
    if layer_names is not None:
        assert [lay["name"] for lay in out["layers"]] == layer_names
    t = out["totals"]
    for key in ("layers", "params", "weight_bytes", "macs", "flops", "peak_activation_bytes",
                "latency_ms", "latency_sum_ratio"):
        assert key in t, key
    assert {"median", "p10", "p90", "cv", "runs"} <= set(t["latency_ms"])
    assert t["latency_ms"]["p10"] <= t["latency_ms"]["median"] <= t["latency_ms"]["p90"]
    assert 0 < t["latency_sum_ratio"] < math.inf
    shares = [lay["latency_share"] for lay in out["layers"] if lay["latency_share"] is not None]
    assert shares and sum(shares) <= 1.0 + 1e-9
    env = out["environment"]
    assert env["threads"] >= 1 and env["cpu"]
    assert env["backend"] in env["libraries"]
    assert isinstance(out["uncounted_ops"], list)
    assert {"backend", "device", "fused", "eliminated", "runtime_nodes", "method"} <= set(out["latency"])


def test_profile_json_contract(model_path, capsys) -> None:
    assert main(["profile", model_path, "--json", "--runs", "3", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    _check_contract(out, ["conv", "relu", "pool", "flatten", "fc"])
    assert out["totals"]["latency_ms"]["runs"] == 3
    assert out["environment"]["threads"] == 1
    by_name = {lay["name"]: lay for lay in out["layers"]}
    assert by_name["conv"]["macs"] == 16 * 3 * 9 * 16 * 16
    assert by_name["fc"]["macs"] == 16 * 10


def test_profile_table_names_the_method(model_path, capsys) -> None:
    assert main(["profile", model_path, "--budget", "0.2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "op", "MACs", "latency", "ms", "share", "%"]
    assert any(line.startswith("conv ") for line in lines)
    assert "ms end to end on onnxruntime cpu" in out
    assert "median of" in out and "p10–p90" in out and "sum/e2e =" in out


def test_profile_with_npz_inputs(model_path, tmp_path, capsys) -> None:
    good = tmp_path / "in.npz"
    np.savez(good, x=np.zeros((1, 3, 16, 16), np.float32))
    assert main(["profile", model_path, "--npz", str(good), "--runs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["latency_ms"]["runs"] == 2
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((1, 3), np.float32))
    assert main(["profile", model_path, "--npz", str(bad), "--runs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "'x' has shape [1, 3]" in err[0]


def test_profile_cuda_without_cuda_is_one_line(model_path, capsys) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    assert main(["profile", model_path, "--device", "cuda", "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "CUDA" in err[0]


def test_runs_and_budget_are_exclusive(model_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["profile", model_path, "--runs", "2", "--budget", "1"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_demo_as_subprocess() -> None:
    from effstudio.core.paths import demo_dir

    if not (demo_dir() / "cnn.safetensors").is_file():
        pytest.skip("demo weights not made yet (python -m effstudio.core.zoo.train cnn)")
    cmd = [sys.executable, "-m", "effstudio", "profile", "demo:cnn", "--json", "--runs", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    _check_contract(out)
    assert out["model"]["path"] == "demo:cnn"
    assert out["latency"]["backend"] == "torch"
    assert all(lay["latency_ms"] is not None for lay in out["layers"])
