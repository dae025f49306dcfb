"""Channel groups found on ONNX graphs (residual adds, concats, depthwise convs, flatten) and
pruning them: the pruned model runs and computes exactly what the original computes once the
removed channels are cut off at their consumers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.compress.onnx_channel_groups import OnnxChannelGraph, prune_groups

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def _model(nodes, inits, out_shape, x_shape=(1, 3, 8, 8), out="y") -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(m)
    return m


def residual_concat_net() -> onnx.ModelProto:
    """A (conv+BN+relu) -> B (conv+clip) added back to A (residual); C and a depthwise conv read the
    sum and are concatenated; E reads the concat; per-channel Mul; pooling, flatten, Gemm."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "A.w", "A.b"], ["a0"], "A", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["a0", "bn.s", "bn.b", "bn.m", "bn.v"], ["a1"], "BN"),
        n("Relu", ["a1"], ["a"], "ReluA"),
        n("Conv", ["a", "B.w"], ["b0"], "B", pads=[1, 1, 1, 1]),
        n("Clip", ["b0", "lo", "hi"], ["b"], "ClipB"),
        n("Add", ["a", "b"], ["s"], "Add"),
        n("Conv", ["s", "C.w"], ["c"], "C"),
        n("Conv", ["s", "D.w"], ["d0"], "D", group=8, pads=[1, 1, 1, 1]),
        n("Relu", ["d0"], ["d"], "ReluD"),
        n("Concat", ["c", "d"], ["cat"], "Cat", axis=1),
        n("Conv", ["cat", "E.w", "E.b"], ["e0"], "E"),
        n("Mul", ["e0", "scale"], ["e"], "Scale"),
        n("GlobalAveragePool", ["e"], ["p"], "Pool"),
        n("Flatten", ["p"], ["f"], "Flat"),
        n("Gemm", ["f", "F.w", "F.b"], ["y"], "F", transB=1),
    ]
    inits = [
        _w("A.w", 8, 3, 3, 3), _w("A.b", 8), _w("bn.s", 8), _w("bn.b", 8), _w("bn.m", 8),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, 8).astype(np.float32), "bn.v"),
        _w("B.w", 8, 8, 3, 3),
        numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi"),
        _w("C.w", 6, 8, 1, 1), _w("D.w", 8, 1, 3, 3), _w("E.w", 10, 14, 1, 1), _w("E.b", 10),
        _w("scale", 1, 10, 1, 1), _w("F.w", 5, 10), _w("F.b", 5),
    ]
    return _model(nodes, inits, (1, 5))


def flatten_net(reshape: bool) -> onnx.ModelProto:
    """Conv (4 channels, 4×4) -> Relu -> Flatten or Reshape to (1, 64) -> Gemm: each channel is 16 inputs."""
    n = helper.make_node
    flat = (n("Reshape", ["r", "shape"], ["f"], "Flat") if reshape else n("Flatten", ["r"], ["f"], "Flat"))
    nodes = [n("Conv", ["x", "A.w"], ["a"], "A"), n("Relu", ["a"], ["r"], "Relu"), flat,
             n("Gemm", ["f", "G.w"], ["y"], "G", transB=1)]
    inits = [_w("A.w", 4, 3, 1, 1), _w("G.w", 3, 64)]
    if reshape:
        inits.append(numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape"))
    return _model(nodes, inits, (1, 3), x_shape=(1, 3, 4, 4))


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def cut_inputs(m: onnx.ModelProto, cg: OnnxChannelGraph, removals) -> onnx.ModelProto:
    """The original model with the removed channels' *input* weights zeroed at every consumer: it
    must compute exactly what the pruned model computes."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    inits = {t.name: t for t in out.graph.initializer}
    for grp, channels in removals:
        idx = np.asarray(sorted(channels))
        for s in grp.slices:
            if s.role != "in":
                continue
            arr = numpy_helper.to_array(inits[s.tensor]).copy()
            p = s.pos[idx].reshape(-1)
            arr[(slice(None),) * s.axis + (p[p >= 0],)] = 0
            inits[s.tensor].CopyFrom(numpy_helper.from_array(arr, s.tensor))
    return out


def shapes(m: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in m.graph.initializer}


def test_residual_add_and_concat_groups():
    cg = OnnxChannelGraph(residual_concat_net())
    ga = cg.group("A")
    assert ga.blocked is None
    assert ga.roots == ["A", "B"]  # the residual add ties B's filters to A's
    assert cg.group("B") is ga
    assert set(ga.layers) == {"A", "BN", "B", "C", "D", "E"}
    assert ga.depthwise == ["D"]
    e_in = next(s for s in ga.slices if s.tensor == "E.w")
    assert e_in.role == "in" and e_in.pos[:, 0].tolist() == list(range(6, 14))  # after C's 6 channels
    gc = cg.group("C")
    assert set(gc.layers) == {"C", "E"}
    assert next(s for s in gc.slices if s.tensor == "E.w").pos[:, 0].tolist() == list(range(6))
    ge = cg.group("E")
    assert ge.blocked is None and set(ge.layers) == {"E", "Scale", "F"}
    assert "model output" in cg.group("F").blocked
    assert "depthwise" in cg.root_problem("D")
    assert "no output channels" in cg.root_problem("Add")


def test_pruned_residual_concat_net_runs_and_matches_cut_original():
    m = residual_concat_net()
    cg = OnnxChannelGraph(m)
    removals = [(cg.group("A"), [0, 3, 5, 6]), (cg.group("C"), [1, 2]), (cg.group("E"), [0, 9, 4])]
    pruned = prune_groups(m, cg, removals)
    onnx.checker.check_model(pruned)
    s = shapes(pruned)
    assert s["A.w"] == (4, 3, 3, 3) and s["A.b"] == (4,) and s["bn.s"] == (4,) and s["bn.v"] == (4,)
    assert s["B.w"] == (4, 4, 3, 3)
    assert s["C.w"] == (4, 4, 1, 1) and s["D.w"] == (4, 1, 3, 3)
    assert s["E.w"] == (7, 8, 1, 1) and s["E.b"] == (7,) and s["scale"] == (1, 7, 1, 1) and s["F.w"] == (5, 7)
    d = next(node for node in pruned.graph.node if node.name == "D")
    assert helper.get_attribute_value(next(a for a in d.attribute if a.name == "group")) == 4
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = run(pruned, x)
    want = run(cut_inputs(m, cg, removals), x)
    assert got.shape == (1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, run(m, x), atol=1e-3)  # the cut is real


@pytest.mark.parametrize("reshape", [False, True])
def test_flatten_spreads_each_channel_over_its_spatial_block(reshape):
    m = flatten_net(reshape)
    cg = OnnxChannelGraph(m)
    grp = cg.group("A")
    assert grp.blocked is None
    g_in = next(s for s in grp.slices if s.tensor == "G.w")
    assert g_in.axis == 1 and g_in.pos.shape == (4, 16) and g_in.pos[2].tolist() == list(range(32, 48))
    removals = [(grp, [1, 2])]
    pruned = prune_groups(m, cg, removals)
    assert shapes(pruned)["G.w"] == (3, 32)
    if reshape:
        target = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "shape"))
        assert target.tolist() == [1, 32]
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, x), run(cut_inputs(m, cg, removals), x), rtol=1e-4, atol=1e-5)


def _blocked(nodes, inits, out_shape, x_shape=(1, 3, 4, 4)):
    return OnnxChannelGraph(_model(nodes, inits, out_shape, x_shape)).group("A").blocked


def test_blocking_ops_are_named():
    n = helper.make_node
    conv = n("Conv", ["x", "A.w"], ["a"], "A")
    w = _w("A.w", 4, 3, 1, 1)
    # a Reshape that moves channels into another axis
    shape = numpy_helper.from_array(np.array([1, 2, 32], dtype=np.int64), "shape")
    why = _blocked([conv, n("Reshape", ["a", "shape"], ["y"], "Mix")], [w, shape], (1, 2, 32))
    assert "Mix (Reshape)" in why and "mixes the channels" in why
    # softmax over the channels
    why = _blocked([conv, n("Softmax", ["a"], ["s"], "Soft", axis=1), n("Relu", ["s"], ["y"], "R")], [w],
                   (1, 4, 4, 4))
    assert "Soft (Softmax)" in why and "normalizes over the channels" in why
    # an op the analysis does not know
    why = _blocked([conv, n("LpNormalization", ["a"], ["y"], "Lp", axis=1)], [w], (1, 4, 4, 4))
    assert "Lp (LpNormalization)" in why
    # the conv's output is the model's output
    assert "model output" in _blocked([n("Conv", ["x", "A.w"], ["y"], "A")], [w], (1, 4, 4, 4))
    # a residual add with the model input cannot lose channels
    x4 = (1, 4, 4, 4)
    w4 = _w("A.w", 4, 4, 1, 1)
    why = _blocked([n("Conv", ["x", "A.w"], ["a"], "A"), n("Add", ["a", "x"], ["s"], "Add"),
                    n("Relu", ["s"], ["y"], "R")], [w4], x4, x_shape=x4)
    assert "model input" in why


def test_transpose_then_matmul_follows_the_moved_axis():
    """NCHW -> NHWC (Transpose) -> MatMul with a stored matrix: the channels are the contracted axis."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "A.w"], ["a"], "A"), n("Transpose", ["a"], ["t"], "T", perm=[0, 2, 3, 1]),
             n("MatMul", ["t", "M"], ["y"], "MM")]
    m = _model(nodes, [_w("A.w", 6, 3, 1, 1), _w("M", 6, 2)], (1, 4, 4, 2), x_shape=(1, 3, 4, 4))
    cg = OnnxChannelGraph(m)
    grp = cg.group("A")
    assert grp.blocked is None and set(grp.layers) == {"A", "MM"}
    removals = [(grp, [0, 4])]
    pruned = prune_groups(m, cg, removals)
    assert shapes(pruned)["M"] == (4, 2)
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, x), run(cut_inputs(m, cg, removals), x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_exported_residual_concat_net_matches_torch_pruning(tmp_path):
    """A torch net with a residual add and a concat, exported with the dynamo exporter: the ONNX
    groups prune the same weights to the same shapes as Torch-Pruning does on the module, and the
    pruned ONNX model equals the original with those channels cut."""
    import contextlib
    import io
    import warnings

    import torch
    from torch import nn

    from effstudio.core.compress.techniques.prune_channels_onnx import prune_onnx_channels
    from effstudio.core.compress.techniques.prune_channels_torch import prune_torch_channels
    from effstudio.core.loaders.onnx_loader import load_onnx
    from effstudio.core.loaders.torch_graph import loaded_from_module
    from effstudio.core.progress import Progress

    class ResCat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.left, self.right = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 4, 1)
            self.head = nn.Conv2d(10, 12, 1)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            a = torch.relu(self.bn(self.stem(x)))
            s = a + torch.relu(self.body(a))
            c = torch.cat([self.left(s), self.right(s)], dim=1)
            h = torch.relu(self.head(c))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    torch.manual_seed(0)
    net = ResCat().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "rescat.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (), kwargs={"x": x}, dynamo=True, optimize=True).save(str(path))
    loaded = load_onnx(path, inputs={}, progress=Progress())
    by_weight = {lay.weights[0].name: lay.name for lay in loaded.graph.layers if lay.op_type == "Conv"}
    roots = [by_weight["stem.weight"], by_weight["left.weight"]]
    pruned, _report, cg, removals = prune_onnx_channels(loaded.onnx_model, roots, amount=0.5, importance="l1",
                                                       round_to=None, progress=Progress())
    assert set(cg.group(roots[0]).roots) == {by_weight["stem.weight"], by_weight["body.weight"]}
    tloaded = loaded_from_module(net, {"x": x}, path="rescat", format="torch-module", progress=Progress())
    module, _ = prune_torch_channels(tloaded, ["stem", "left"], amount=0.5, importance="l1", round_to=None,
                                     taylor_data=None, progress=Progress())
    onnx_shapes = shapes(pruned)
    for name, p in module.named_parameters():
        if name.endswith(".weight") and name in onnx_shapes:
            assert onnx_shapes[name] == tuple(p.shape), name
    assert onnx_shapes["stem.weight"] == (4, 3, 3, 3) and onnx_shapes["head.weight"] == (12, 7, 1, 1)
    xa = x.numpy()
    np.testing.assert_allclose(run(pruned, xa), run(cut_inputs(loaded.onnx_model, cg, removals), xa),
                               rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert module(x=x).shape == (1, 5)
