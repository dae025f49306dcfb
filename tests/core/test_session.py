"""Sessions: versions as a tree, undo / redo / branches, failures and cancellation change nothing."""

from __future__ import annotations

import numpy as np
import pytest
from compress_models import same_weights, tiny_onnx, tiny_torch, weights_of

from effstudio.core.compress.base import CompressError, Expectation
from effstudio.core.compress.numbers import judge_step, metrics_table
from effstudio.core.compress.session import Session
from effstudio.core.compress.store import Store
from effstudio.core.progress import Cancelled, Progress


@pytest.fixture(scope="module")
def torch_model():
    return tiny_torch()


def test_apply_makes_a_new_current_version_with_numbers(torch_model):
    before = weights_of(torch_model)
    s = Session(torch_model, measure=False)
    v1 = s.apply("testing.scale", {"factor": 0.0}, ["conv"])
    assert (s.current_id, v1.id, v1.parent_id) == (1, 1, 0)
    assert v1.step.layers == ["conv"] and v1.step.selection == ["conv"]
    # the original is untouched; the new model's conv kernel is zero
    assert all(np.array_equal(before[k], v) for k, v in weights_of(torch_model).items())
    assert not np.any(weights_of(v1.model)["conv.weight"])
    t0, t1 = s.root.numbers["totals"], v1.numbers["totals"]
    assert t0["params"] == t1["params"] == 8 * 9 + 8 + 80 + 10
    assert t1["compressed_weight_bytes"] < t0["compressed_weight_bytes"]
    fid = v1.numbers["fidelity"]
    assert fid["n_samples"] == 4 and 0 < fid["cosine"] < 1 and fid["rel_l2"] > 0
    assert s.root.numbers["fidelity"] is None
    j = v1.numbers["judgement"]
    assert (j["expected"], j["size"], j["met"], j["speed"]) == ("smaller-only", "smaller", True, None)
    assert v1.numbers["changed"] == ["conv"] and v1.status == "static"


def test_selection_patterns_and_every_applicable_layer(torch_model):
    s = Session(torch_model, measure=False)
    assert s.apply("testing.scale", {"factor": 2.0}, ["re:c.*"]).step.layers == ["conv"]
    v = s.apply("testing.scale", {"factor": 2.0}, None)  # every layer with a weight matrix
    assert v.step.layers == ["conv", "fc"] and v.step.selection is None
    assert np.array_equal(weights_of(v.model)["conv.weight"], 4 * weights_of(torch_model)["conv.weight"])


def test_undo_redo_and_branching(torch_model):
    s = Session(torch_model, measure=False)
    s.apply("testing.scale", {"factor": 0.5}, ["conv"])
    s.apply("testing.scale", {"factor": 0.5}, ["fc"])
    assert s.undo().id == 1 and s.undo().id == 0
    assert s.undo() is None and s.current_id == 0
    assert s.redo().id == 1 and s.redo().id == 2 and s.redo() is None
    s.checkout(1)
    v3 = s.apply("testing.scale", {"factor": 3.0}, ["fc"])  # a sibling of v2
    assert v3.parent_id == 1 and [c.id for c in s.children(1)] == [2, 3]
    s.undo()
    assert s.redo().id == 3  # the most recent child
    assert [v.id for v in s.path_to()] == [0, 1, 3]
    steps = s.recipe().steps
    assert [(st.config["factor"], st.selection) for st in steps] == [(0.5, ["conv"]), (3.0, ["fc"])]
    with pytest.raises(CompressError, match="no version v9"):
        s.checkout(9)


def test_a_bad_selection_names_the_layers_and_changes_nothing(torch_model):
    s = Session(torch_model, measure=False)
    with pytest.raises(CompressError) as e:
        s.apply("testing.scale", {"factor": 0.5}, ["conv", "relu", "mean"])
    msg = str(e.value)
    assert "does not apply to 2 selected layer(s)" in msg and "relu (has no weight matrix)" in msg and "mean" in msg
    with pytest.raises(CompressError, match="matches no layer"):
        s.apply("testing.scale", {"factor": 0.5}, ["nothing.*"])
    with pytest.raises(CompressError, match="unknown setting"):
        s.apply("testing.scale", {"factr": 0.5}, ["conv"])
    assert list(s.versions) == [0] and s.current_id == 0


def test_a_failing_step_is_wrapped_and_changes_nothing(tmp_path, torch_model):
    store = Store(tmp_path)
    s = Session(torch_model, store, measure=False)
    s.apply("testing.scale", {"factor": 0.5}, ["conv"])
    with pytest.raises(CompressError, match="step failed: RuntimeError: deliberate failure"):
        s.apply("testing.fail", {}, ["conv"])
    assert list(s.versions) == [0, 1] and s.current_id == 1
    assert [r.id for r in store.versions(s.id)] == [0, 1] and store.session(s.id).current == 1


def test_cancelling_a_step_changes_nothing(tmp_path, torch_model):
    store = Store(tmp_path)
    s = Session(torch_model, store, measure=False)
    seen = []

    def cancel_when_applying(fraction: float, message: str) -> None:
        seen.append(message)
        if message.startswith("scaling"):
            p.cancel()

    p = Progress(cancel_when_applying)
    with pytest.raises(Cancelled):
        s.apply("testing.scale", {"factor": 0.5}, ["conv"], progress=p)
    assert any(m.startswith("scaling") for m in seen)
    assert list(s.versions) == [0] and [r.id for r in store.versions(s.id)] == [0]
    assert list((tmp_path / "sessions" / s.id).glob("*")) == []  # no model file, no temp folder left


def test_onnx_versions_and_latency(tmp_path):
    original = tiny_onnx(tmp_path)
    s = Session(original, measure=True, latency={"runs": 5, "per_layer": False})
    v = s.apply("testing.scale", {"factor": -1.0}, ["fc"])
    assert v.model.backend == "onnx"
    # negating the last layer negates the scores: cosine -1, top-1 never agrees
    assert v.numbers["fidelity"]["cosine"] == pytest.approx(-1.0)
    assert v.numbers["fidelity"]["top1_agreement"] == 0.0
    for n in (s.root.numbers, v.numbers):
        assert n["latency"]["runs"] == 5 and n["latency"]["median"] > 0
    assert v.numbers["judgement"]["speed"] in ("faster", "slower", "same")
    table = metrics_table(v.numbers)  # what the views read
    assert table.get("macs", "conv") == 8 * 9 * 64 and table.get("params", "fc") == 90
    assert table.totals["latency_ms"]["runs"] == 5 and table.totals["params"] == v.numbers["totals"]["params"]


def test_reopened_torch_session_continues_exactly(tmp_path, torch_model):
    store = Store(tmp_path)
    s = Session(torch_model, store, measure=False, spec={"spec": "tests:tiny"})
    s.apply("testing.scale", {"factor": 0.5}, ["conv"])
    s.apply("testing.scale", {"factor": 2.0}, ["fc"])
    live = s.apply("testing.scale", {"factor": 3.0}, ["conv"])
    s.undo()

    again = Session.open(store, s.id, torch_model, measure=False)
    assert again.current_id == 2 and sorted(again.versions) == [0, 1, 2, 3]
    assert again.versions[3].numbers == live.numbers
    assert not again.versions[2].loaded  # lazy
    assert same_weights(again.versions[2].model, s.versions[2].model)
    # continuing from a reloaded torch version replays its steps to get the eager module back
    cont = again.apply("testing.scale", {"factor": 3.0}, ["conv"])
    assert cont.id == 4 and cont.parent_id == 2
    assert same_weights(cont.model, live.model)
    assert again.recipe().steps == s.recipe(3).steps


def test_session_open_refuses_another_model(tmp_path):
    store = Store(tmp_path / "store")
    a = tiny_onnx(tmp_path / "a", seed=0)
    s = Session(a, store, measure=False)
    other = tiny_onnx(tmp_path / "a", seed=1)  # another file: another identity
    with pytest.raises(CompressError, match="this model differs"):
        Session.open(store, s.id, other)
    reopened = Session.open(store, s.id)  # reopened from the stored spec (the file)
    assert same_weights(reopened.original, a)


def test_judge_step_says_when_a_step_made_things_worse():
    before = {"totals": {"weight_bytes": 1000, "compressed_weight_bytes": 900},
              "latency": {"median": 1.0, "p10": 0.95, "p90": 1.05}}
    after = {"totals": {"weight_bytes": 1200, "compressed_weight_bytes": 1000},
             "latency": {"median": 1.5, "p10": 1.4, "p90": 1.6}}
    j = judge_step("quant.x", Expectation("faster-and-smaller", "int8 kernels"), before, after)
    assert (j["size"], j["speed"], j["met"]) == ("larger", "slower", False)
    assert j["warnings"] == ["quant.x made the model slower on this machine: 1.000 ms → 1.500 ms median.",
                             "quant.x made the model larger: 1000 B → 1.17 KB of weights (1000 B zipped)."]
    same = judge_step("x", Expectation("faster", ""), before,
                      {**before, "latency": {"median": 1.02, "p10": 0.97, "p90": 1.08}})
    assert (same["speed"], same["met"], same["warnings"]) == ("same", False, [])
    unmeasured = judge_step("x", Expectation("faster", ""), before, {"totals": before["totals"], "latency": None})
    assert unmeasured["met"] is None
