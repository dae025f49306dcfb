"""The hierarchical graph layout (Qt-free): coverage, grouping, merged edges, caching, limits."""

from __future__ import annotations

import pytest

from effstudio.core import layout as lay_mod
from effstudio.core.graph import Layer, LayerGraph, TensorInfo
from effstudio.core.layout import HierarchicalLayout, ScopeTree, default_expanded, layout_graph
from effstudio.core.progress import Cancelled, Progress


def make_graph(spec: list[tuple[str, str, str, list[str]]]) -> LayerGraph:
    """``(name, op_type, scope, [input layer names])``; each layer outputs ``name:0``."""
    g = LayerGraph()
    for name, op, scope, ins in spec:
        g.layers.append(Layer(name, op, scope, inputs=[f"{i}:0" for i in ins], outputs=[f"{name}:0"]))
        g.tensors[f"{name}:0"] = TensorInfo(f"{name}:0", (1, 8), "float32")
    return g


def block_graph(blocks: int = 3) -> LayerGraph:
    """A small transformer-ish graph: embed, blocks with attention/mlp sub-scopes, head."""
    spec = [("embed", "Gather", "", [])]
    prev = "embed"
    for b in range(blocks):
        s = f"enc.layer.{b}"
        spec += [
            (f"{s}.attn.q", "MatMul", f"{s}.attn", [prev]),
            (f"{s}.attn.k", "MatMul", f"{s}.attn", [prev]),
            (f"{s}.attn.v", "MatMul", f"{s}.attn", [prev]),
            (f"{s}.attn.sm", "Softmax", f"{s}.attn", [f"{s}.attn.q", f"{s}.attn.k"]),
            (f"{s}.attn.av", "MatMul", f"{s}.attn", [f"{s}.attn.sm", f"{s}.attn.v"]),
            (f"{s}.add1", "Add", s, [f"{s}.attn.av", prev]),
            (f"{s}.mlp.fc1", "Gemm", f"{s}.mlp", [f"{s}.add1"]),
            (f"{s}.mlp.act", "Gelu", f"{s}.mlp", [f"{s}.mlp.fc1"]),
            (f"{s}.mlp.fc2", "Gemm", f"{s}.mlp", [f"{s}.mlp.act"]),
            (f"{s}.add2", "Add", s, [f"{s}.mlp.fc2", f"{s}.add1"]),
        ]
        prev = f"{s}.add2"
    spec.append(("head", "Gemm", "head", [prev]))
    spec.append(("head.softmax", "Softmax", "head", ["head"]))
    return make_graph(spec)


def covered(vg) -> list[str]:
    return [name for n in vg.nodes for name in n.layers]


@pytest.mark.parametrize("expanded", [(), ("enc.layer.1",), ("enc.layer.0.attn", "enc.layer.2.mlp"), "all"])
def test_every_layer_is_shown_exactly_once(expanded):
    g = block_graph()
    hl = HierarchicalLayout(g)
    vg = hl.layout(hl.tree.scopes if expanded == "all" else expanded)
    names = covered(vg)
    assert sorted(names) == sorted(g.names())
    assert len(names) == len(set(names))
    assert len({n.id for n in vg.nodes}) == len(vg.nodes)


def test_collapsed_scope_is_one_group_with_its_layers_and_merged_edges():
    g = block_graph()
    vg = HierarchicalLayout(g).layout(["enc.layer"])  # blocks visible as groups
    groups = {n.id: n for n in vg.nodes if n.kind == "group"}
    assert set(groups) == {"enc.layer.0", "enc.layer.1", "enc.layer.2", "scope:head"}  # a layer is "head"
    inside = sorted(lay.name for lay in g.layers_in_scope("enc.layer.1"))
    assert sorted(groups["enc.layer.1"].layers) == inside
    assert groups["enc.layer.1"].label == "layer.1"
    # block 0 -> block 1 carries two tensors (add2 feeds q, k, v and the residual add1): one edge
    e01 = [e for e in vg.edges if (e.src, e.dst) == ("enc.layer.0", "enc.layer.1")]
    assert len(e01) == 1
    assert e01[0].tensors == ["enc.layer.0.add2:0"]
    assert "enc.layer.0.add2:0: 1×8" in e01[0].shape_text
    # no edge from a group to itself
    assert all(e.src != e.dst for e in vg.edges)


def test_expanding_changes_visible_count_and_frames():
    g = block_graph()
    hl = HierarchicalLayout(g)
    closed = hl.layout([])
    opened = hl.layout(["enc.layer.1"])
    assert len(opened.nodes) > len(closed.nodes)
    assert {f.scope for f in opened.frames} == {"enc.layer", "enc.layer.1"}
    frame = next(f for f in opened.frames if f.scope == "enc.layer.1")
    for n in opened.nodes:
        if n.scope.startswith("enc.layer.1"):  # inside its frame, below the header
            assert frame.x <= n.x and n.x + n.w <= frame.x + frame.w
            assert frame.y + frame.header_h <= n.y and n.y + n.h <= frame.y + frame.h


def test_boxes_do_not_overlap_and_edges_run_top_down():
    g = block_graph()
    hl = HierarchicalLayout(g)
    vg = hl.layout(hl.tree.scopes)
    boxes = [(n.x, n.y, n.x + n.w, n.y + n.h) for n in vg.nodes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    by_id = {n.id: n for n in vg.nodes}
    for e in vg.edges:
        s, d = by_id[e.src], by_id[e.dst]
        (x0, y0), (x1, y1) = e.points[0], e.points[-1]
        assert s.x < x0 < s.x + s.w and y0 == pytest.approx(s.y + s.h)  # leaves the source's bottom
        assert d.x < x1 < d.x + d.w and y1 == pytest.approx(d.y)  # enters the target's top
        assert s.y < d.y  # a DAG: inputs at the top
    assert min(n.x for n in vg.nodes) >= 0 and max(n.x + n.w for n in vg.nodes) <= vg.width + 1e-6


def test_per_scope_placements_are_cached():
    g = block_graph()
    hl = HierarchicalLayout(g)
    hl.layout([])
    assert hl.cached_scopes() == {""}
    hl.layout(["enc.layer.1"])
    assert hl.cached_scopes() == {"", "enc.layer", "enc.layer.1"}
    before = dict(hl._placements)
    hl.layout(["enc.layer.1", "enc.layer.2"])
    assert hl.cached_scopes() == {"", "enc.layer", "enc.layer.1", "enc.layer.2"}
    assert all(hl._placements[s] is before[s] for s in before)  # nothing laid out again


def test_default_expanded_opens_repeats_together_within_the_limit():
    g = block_graph(blocks=6)
    tree = ScopeTree(g)
    exp = default_expanded(tree, max_visible=30)
    assert tree.visible_count(exp) <= 30
    assert {"enc.layer", "head"} <= exp
    blocks = {f"enc.layer.{i}" for i in range(6)}
    assert blocks <= exp or not (blocks & exp)  # the six blocks open together or not at all
    assert default_expanded(tree, max_visible=1000) == frozenset(tree.scopes)
    assert default_expanded(tree, max_visible=3) == frozenset()


def test_unscoped_graph_has_no_groups():
    g = make_graph([("a", "Conv", "", []), ("b", "Relu", "", ["a"]), ("c", "Add", "", ["a", "b"])])
    vg = layout_graph(g)
    assert [n.kind for n in vg.nodes] == ["layer"] * 3
    assert vg.frames == []
    assert {(e.src, e.dst) for e in vg.edges} == {("a", "b"), ("a", "c"), ("b", "c")}
    ys = {n.id: n.y for n in vg.nodes}
    assert ys["a"] < ys["b"] < ys["c"]
    long_edge = next(e for e in vg.edges if (e.src, e.dst) == ("a", "c"))
    assert len(long_edge.points) == 4  # bends around b's row


def test_trivial_scopes_are_not_boxes():
    # torch leaf modules: a scope holding one layer named like the scope; a pass-through "model"
    g = make_graph([
        ("model.features.0", "conv2d", "model.features.0", []),
        ("model.features.1", "relu", "model.features.1", ["model.features.0"]),
        ("model.features.2", "conv2d", "model.features.2", ["model.features.1"]),
        ("model.fc", "linear", "model", ["model.features.2"]),
    ])
    tree = ScopeTree(g)
    assert tree.scopes == ["model", "model.features"]
    assert tree.children["model.features"] == [("L", f"model.features.{i}") for i in range(3)]
    assert tree.shown_scope("model.features.1") == "model.features"
    assert tree.normalize(["model.features.1"]) == {"model", "model.features"}
    vg = HierarchicalLayout(g).layout(["model"])
    assert {n.id: n.kind for n in vg.nodes} == {"model.features": "group", "model.fc": "layer"}
    vg = HierarchicalLayout(g).layout(["model.features"])
    labels = {n.id: n.label for n in vg.nodes}
    assert labels["model.features.1"] == "features.1"
    # pass-through chains collapse into one scope
    g2 = make_graph([("x", "A", "a.b.c", []), ("y", "B", "a.b.c", ["x"]), ("z", "C", "", ["y"])])
    assert ScopeTree(g2).scopes == ["a.b.c"]
    assert ScopeTree(g2).shown_scope("a") == "a.b.c"


def test_group_id_avoids_a_layer_with_the_same_name():
    g = make_graph([("blk", "Add", "", []), ("blk.x", "Relu", "blk", ["blk"]),
                    ("blk.y", "Relu", "blk", ["blk.x"])])
    vg = HierarchicalLayout(g).layout([])
    assert {n.id for n in vg.nodes} == {"blk", "scope:blk"}


def test_cancel_stops_the_layout():
    g = block_graph()
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        HierarchicalLayout(g).layout(["enc.layer"], progress=p)


def test_cycles_and_self_loops_do_not_break_layout():
    g = make_graph([("a", "Loop", "", ["c"]), ("b", "Relu", "", ["a", "b"]), ("c", "Add", "", ["b"])])
    vg = layout_graph(g)
    assert sorted(covered(vg)) == ["a", "b", "c"]
    assert {(e.src, e.dst) for e in vg.edges} == {("a", "b"), ("b", "c"), ("c", "a")}


@pytest.mark.slow
def test_big_single_scope_lays_out_in_a_child_process(monkeypatch):
    spec = [("n0", "Conv", "", [])]
    for i in range(1, 400):
        ins = [f"n{i - 1}"] + ([f"n{i - 7}"] if i % 5 == 0 and i >= 7 else [])
        spec.append((f"n{i}", "Relu", "", ins))
    g = make_graph(spec)
    here = HierarchicalLayout(g).layout([])
    monkeypatch.setattr(lay_mod, "PROCESS_THRESHOLD", 100)
    try:
        there = HierarchicalLayout(g).layout([])
        assert lay_mod._pool is not None  # it did go through the child process
    finally:
        lay_mod.shutdown_process_pool()
    assert [(n.id, n.x, n.y) for n in there.nodes] == [(n.id, n.x, n.y) for n in here.nodes]
    assert [e.points for e in there.edges] == [e.points for e in here.edges]
