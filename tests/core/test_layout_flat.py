"""A big graph without scopes opens in synthetic groups of consecutive layers (like a scoped
model) instead of as one huge layout; a small one is left as it is."""

from __future__ import annotations

from effstudio.core.graph import Layer, LayerGraph, TensorInfo
from effstudio.core.layout import FLAT_LIMIT, RUN_FANOUT, RUN_SIZE, HierarchicalLayout, run_scopes


def chain(n: int, scope: str = "") -> LayerGraph:
    layers = [Layer(f"op{i}", "Relu", scope, inputs=[f"t{i}"], outputs=[f"t{i + 1}"]) for i in range(n)]
    return LayerGraph(layers, inputs=[TensorInfo("t0", (1, 4))], outputs=[TensorInfo(f"t{n}", (1, 4))])


def test_small_or_scoped_graphs_get_no_synthetic_groups() -> None:
    assert run_scopes(chain(FLAT_LIMIT)) == {}
    assert run_scopes(chain(5 * FLAT_LIMIT, scope="body")) == {}


def test_a_flat_graph_is_grouped_in_runs_of_consecutive_layers() -> None:
    n = RUN_SIZE * RUN_FANOUT * 4 + RUN_SIZE * 3 + 7  # needs a second level
    g = chain(n)
    scopes = run_scopes(g)
    assert set(scopes) == {lay.name for lay in g.layers}
    runs = [scopes[f"op{i}"].split(".")[-1] for i in range(n)]
    assert runs[0] == f"layers 1–{RUN_SIZE}" and runs[RUN_SIZE] == f"layers {RUN_SIZE + 1}–{2 * RUN_SIZE}"
    assert runs[-1] == f"layers {n // RUN_SIZE * RUN_SIZE + 1}–{n}"
    # consecutive: each run is one stretch of the graph order
    firsts = {}
    for i, r in enumerate(runs):
        firsts.setdefault(r, i)
        assert i - firsts[r] < RUN_SIZE
    assert all(s.count(".") == 1 for s in scopes.values())  # two levels
    assert scopes["op0"].split(".")[0] == f"layers 1–{RUN_SIZE * RUN_FANOUT}"


def test_a_flat_graph_opens_collapsed_and_expands_like_a_scoped_one() -> None:
    n = FLAT_LIMIT * 3
    hl = HierarchicalLayout(chain(n))
    vg = hl.layout(hl.default_expanded(60))
    assert len(vg.nodes) <= 60 and all(nd.kind == "group" for nd in vg.nodes)
    assert sorted(lay for nd in vg.nodes for lay in nd.layers) == sorted(f"op{i}" for i in range(n))
    first = vg.nodes[0].scope
    vg2 = hl.layout({first})
    shown = [nd for nd in vg2.nodes if nd.kind == "layer"]
    assert [nd.id for nd in shown] == [f"op{i}" for i in range(RUN_SIZE)]
    assert shown[0].label == "op0"  # layers keep their own names
    assert len(vg2.edges) == len(vg2.nodes) - 1  # still one chain: op39 -> the next group


def test_names_never_clash_with_layers() -> None:
    g = chain(FLAT_LIMIT + 1)
    g.layers[0].name = f"layers 1–{RUN_SIZE}"
    assert run_scopes(g)[g.layers[0].name] == f"layers 1–{RUN_SIZE} (group)"
