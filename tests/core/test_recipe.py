"""Recipes: YAML round trip, validation that names the bad step, and bit-exact replay."""

from __future__ import annotations

import pytest
import yaml
from compress_models import same_weights, tiny_onnx, tiny_torch, weights_of

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.recipe import Recipe, Step, load_recipe, replay, save_recipe
from effstudio.core.compress.session import Session


@pytest.fixture(scope="module")
def torch_model():
    return tiny_torch()


def _recipe(steps: list[dict]) -> dict:
    return {"effstudio_recipe": 1, "model": {"path": "x.onnx", "format": "onnx"}, "steps": steps}


def test_save_and_load_round_trip(tmp_path):
    r = Recipe({"path": "demo:cnn", "format": "demo", "sha256": None}, [
        Step("testing.scale", 1, {"factor": 0.5}, ["features.*", "re:head\\..*"], ["Conv"]),
        Step("testing.scale", 1, {"factor": 2.0}, None),
    ])
    path = save_recipe(r, tmp_path / "r" / "recipe.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["effstudio_recipe"] == 1 and data["steps"][1]["selection"] is None
    assert data["steps"][0] == {"technique": "testing.scale", "version": 1, "config": {"factor": 0.5},
                                "selection": ["features.*", "re:head\\..*"], "op_types": ["Conv"]}
    assert load_recipe(path) == r
    assert [p.name for p in path.parent.iterdir()] == ["recipe.yaml"]  # no temp file left


@pytest.mark.parametrize(("steps", "message"), [
    ([{"technique": "testing.scale", "config": {"factor": 1}}, {"technique": "no.such"}],
     r"step 2 \(no.such\): unknown technique 'no.such'"),
    ([{"technique": "testing.scale", "config": {"amount": 1}}], r"step 1 \(testing.scale\): .*unknown setting"),
    ([{"technique": "testing.scale", "config": {"factor": 99}}], r"step 1 \(testing.scale\): .*\[-10, 10\]"),
    ([{"technique": "testing.scale", "version": 7}], "step 1 .*version 7 is newer"),
    ([{"technique": "testing.scale", "selection": []}], "step 1 .*selection must be a non-empty list"),
    ([{"technique": "testing.scale", "colour": "red"}], "step 1: unknown key"),
])
def test_validation_names_the_step(tmp_path, steps, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(steps)))
    with pytest.raises(CompressError, match=message) as e:
        load_recipe(path)
    assert str(e.value).startswith(str(path))


def test_not_a_recipe(tmp_path):
    for text, message in [("steps: []\n", "not an effstudio recipe"), ("a: [\n", "not valid YAML"),
                          ("effstudio_recipe: 2\nsteps: []\n", "recipe format 2")]:
        path = tmp_path / "r.yaml"
        path.write_text(text)
        with pytest.raises(CompressError, match=message):
            load_recipe(path)
    with pytest.raises(CompressError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")


def test_replay_gives_bit_identical_torch_weights(tmp_path, torch_model):
    s = Session(torch_model, measure=False)
    s.apply("testing.scale", {"factor": 0.3}, ["conv"])
    s.apply("testing.scale", {"factor": -1.7}, None, op_types=["linear"])
    path = save_recipe(s.recipe(), tmp_path / "r.yaml")
    again = replay(load_recipe(path), torch_model)
    assert [v.id for v in again.path_to()] == [0, 1, 2]
    assert again.current.step.layers == ["fc"]
    a, b = weights_of(again.current.model), weights_of(s.current.model)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert same_weights(again.current.model, s.current.model)
    assert not same_weights(again.current.model, torch_model)


def test_replay_gives_bit_identical_onnx_initializers(tmp_path):
    original = tiny_onnx(tmp_path)
    s = Session(original, measure=False)
    s.apply("testing.scale", {"factor": 0.1}, ["fc", "conv"])
    s.apply("testing.scale", {"factor": 3.0}, ["scope:"], op_types=["Conv", "gemm"])  # every layer, by op
    assert s.current.step.layers == ["conv", "fc"]
    rec = load_recipe(save_recipe(s.recipe(), tmp_path / "r.yaml"))
    assert same_weights(replay(rec, original).current.model, s.current.model)


def test_replay_names_the_failing_step(tmp_path):
    original = tiny_onnx(tmp_path)
    rec = Recipe({}, [Step("testing.scale", 1, {"factor": 0.5}, ["conv"]),
                      Step("testing.scale", 1, {"factor": 0.5}, ["relu"])])
    with pytest.raises(CompressError, match=r"recipe step 2 \(testing.scale\): .*relu \(has no weight matrix\)"):
        replay(rec, original)
