"""Hierarchical, top-down layout of a :class:`LayerGraph` for the graph view (Qt-free).

A *view state* is the set of expanded scopes (module paths).  The root scope ``""`` is always
expanded; every collapsed scope is drawn as ONE group node carrying all of its layers, and every
expanded scope (other than the root) as a frame around its own children.  Each expanded scope's
children — its direct layers and its child scopes — are laid out on their own with igraph's
Sugiyama layout; that crossing-minimised placement does not depend on which scopes are expanded
(only the children's sizes do), so it is computed once per scope and cached, and expanding or
collapsing one scope lays out at most that scope's children.  Turning the cached placements into
coordinates for given sizes is a cheap pass in Python.

igraph holds the GIL while it lays out, so a single Sugiyama call on thousands of nodes (a big
model without scopes) runs in a child process, which keeps the GUI thread of the caller
responsive; small calls run in the calling thread.

The result, :class:`VisibleGraph`, is plain data: nodes with boxes, frames, and merged edges with
polylines (top-down: inputs at the top, y grows downwards).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from effstudio.core.graph import LayerGraph
from effstudio.core.progress import Progress

# Sugiyama calls with more vertices than this run in a child process (see module docstring).
# igraph lays out ~1k vertices in well under 50 ms; the child process costs ~0.5 s to start once.
PROCESS_THRESHOLD = 1500
MAX_TENSOR_LINES = 8  # tensors named in an edge's shape text; the rest are counted
MAXITER = 10  # crossing-reduction sweeps: igraph's default (100) is 5x slower for little gain


@dataclass(frozen=True)
class LayoutStyle:
    """Box sizes and gaps in scene units (pixels at zoom 1)."""

    node_w: float = 150.0
    node_h: float = 42.0
    group_w: float = 190.0
    group_h: float = 54.0
    hgap: float = 26.0  # between boxes in a row
    vgap: float = 34.0  # between rows
    dummy_w: float = 10.0  # room kept in a row for an edge passing through it
    pad: float = 12.0  # inside a frame, around its children
    header_h: float = 22.0  # a frame's title bar


@dataclass
class VNode:
    """A visible box: one layer, or one collapsed scope (``kind == "group"``)."""

    id: str  # the layer name, or the scope (see :func:`group_id`)
    label: str  # short text: the last part of the name / the scope relative to its parent
    op_type: str  # the layer's op type; "" for groups
    kind: str  # "layer" | "group"
    layers: list[str]  # the layer names it stands for (one for a layer)
    x: float = 0.0  # top-left corner
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    scope: str = ""  # the layer's scope, or the group's own scope

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


@dataclass
class VEdge:
    """One drawn edge: every tensor between two visible nodes, merged."""

    src: str
    dst: str
    tensors: list[str]
    shape_text: str  # "name: 1×64×8×8" lines, one per tensor
    points: list[tuple[float, float]]  # polyline from the source's bottom to the target's top


@dataclass
class VFrame:
    """An expanded scope: a background box around its children, with a header to collapse it."""

    scope: str
    label: str
    depth: int  # 1 for a child of the root
    layers: list[str]
    x: float
    y: float
    w: float
    h: float
    header_h: float


@dataclass
class VisibleGraph:
    nodes: list[VNode]
    edges: list[VEdge]
    frames: list[VFrame] = field(default_factory=list)  # outer frames first
    expanded: frozenset[str] = frozenset()
    width: float = 0.0
    height: float = 0.0

    def node(self, node_id: str) -> VNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def node_of_layer(self) -> dict[str, str]:
        """Layer name -> id of the visible node that shows it."""
        return {lay: n.id for n in self.nodes for lay in n.layers}


# --- the scope tree ---------------------------------------------------------------------------

def _parts(scope: str) -> tuple[str, ...]:
    return tuple(p for p in scope.split(".") if p) if scope else ()


def _join(parts: tuple[str, ...]) -> str:
    return ".".join(parts)


def scope_ancestors(scope: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]`` (the root ``""`` excluded)."""
    parts = _parts(scope)
    return [_join(parts[: i + 1]) for i in range(len(parts))]


def short_label(scope: str, parent: str) -> str:
    """A scope's name inside its parent; a bare index keeps the word before it (``layer.3``)."""
    rel = _parts(scope)[len(_parts(parent)):]
    if not rel:
        return scope or "(root)"
    last = rel[-1]
    if last.isdigit() and len(_parts(scope)) >= 2 and len(rel) == 1:
        return f"{_parts(scope)[-2]}.{last}"
    return _join(rel)


def layer_label(name: str, scope: str) -> str:
    """A layer's name without its scope prefix (the full name stays in tooltips)."""
    if scope and name.startswith(scope + "."):
        rest = name[len(scope) + 1:]
        if rest.isdigit():
            return f"{_parts(scope)[-1]}.{rest}"
        if rest:
            return rest
    return name


Child = tuple[str, str]  # ("L", layer name) | ("S", scope)

# A graph with more top-level layers than this (an export without scope metadata) is shown in
# synthetic groups of consecutive layers ("layers 1–40"), nested RUN_FANOUT to a level, so that it
# opens collapsed like a scoped model instead of as one huge Sugiyama layout (seconds at 10k).
FLAT_LIMIT = 400
RUN_SIZE = 40
RUN_FANOUT = 10


def run_scopes(graph: LayerGraph) -> dict[str, str]:
    """Synthetic scopes for the top-level layers of a graph that has too many of them (see
    :data:`FLAT_LIMIT`): runs of :data:`RUN_SIZE` consecutive top-level layers (graph order is
    topological, so a run is a stretch of the network), grouped again by :data:`RUN_FANOUT` until
    few enough remain.  Layer name -> scope path; empty when the graph needs none."""
    top = [lay.name for lay in graph.layers if not lay.scope]
    if len(top) <= FLAT_LIMIT:
        return {}
    # level 0: runs of layers; each further level: runs of the level below
    spans = [(i, min(i + RUN_SIZE, len(top))) for i in range(0, len(top), RUN_SIZE)]
    levels = [spans]
    while len(levels[-1]) > RUN_FANOUT * 4:
        below = levels[-1]
        levels.append([(below[i][0], below[min(i + RUN_FANOUT, len(below)) - 1][1])
                       for i in range(0, len(below), RUN_FANOUT)])
    taken = {lay.scope for lay in graph.layers} | {lay.name for lay in graph.layers}

    def name(lo: int, hi: int) -> str:
        label = f"layers {lo + 1}–{hi}"
        return label if label not in taken else f"{label} (group)"

    names = [[name(lo, hi) for lo, hi in level] for level in levels]
    out: dict[str, str] = {}
    for k, lay_name in enumerate(top):
        run = k // RUN_SIZE
        out[lay_name] = ".".join(names[j][run // RUN_FANOUT ** j] for j in range(len(levels) - 1, -1, -1))
    return out


class ScopeTree:
    """The scopes shown as boxes, their children, and which edges belong to which scope.

    Scopes that add nothing to the picture are not shown: a scope holding a single layer (a
    torch leaf module: its layer is shown in the parent instead, avoiding a box named like its
    only layer) and a scope whose only child is another scope (``model`` around
    ``model.encoder``: shown once, as ``model.encoder``).  Every other scope is *kept*.
    """

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        # the raw module tree
        raw_count: dict[str, int] = {}
        raw_kids: dict[str, list[str]] = {}
        raw_direct: dict[str, int] = {}
        layer_parts: dict[str, tuple[str, ...]] = {}
        prefixes: dict[str, tuple[tuple[str, ...], list[str]]] = {}  # memo: scope -> parts, paths
        synthetic = run_scopes(graph)
        self.synthetic: frozenset[str] = frozenset(s for sc in synthetic.values() for s in scope_ancestors(sc))
        for lay in graph.layers:
            scope = synthetic.get(lay.name, lay.scope)
            memo = prefixes.get(scope)
            if memo is None:
                parts = _parts(scope)
                memo = prefixes[scope] = (parts, [_join(parts[: i + 1]) for i in range(len(parts))])
            parts, paths = memo
            layer_parts[lay.name] = parts
            key = paths[-1] if paths else ""
            raw_direct[key] = raw_direct.get(key, 0) + 1
            parent = ""
            for s in paths:
                if s not in raw_count:
                    raw_count[s] = 0
                    raw_kids.setdefault(parent, []).append(s)
                raw_count[s] += 1
                parent = s
        self.raw_scopes: set[str] = set(raw_count)
        self._raw_kids = raw_kids
        self.kept: set[str] = {
            s for s, n in raw_count.items()
            if n >= 2 and not (raw_direct.get(s, 0) == 0 and len(raw_kids.get(s, ())) == 1)}

        self.layer_scope: dict[str, str] = {}  # layer -> the kept scope it is shown in
        self.chain: dict[str, tuple[str, ...]] = {}  # layer -> kept ancestors, outermost first
        self.children: dict[str, list[Child]] = {"": []}  # in order of first appearance
        self.parent: dict[str, str] = {}
        self.layers_under: dict[str, list[str]] = {"": []}
        self.depth: dict[str, int] = {"": 0}
        chains: dict[tuple[str, ...], tuple[str, ...]] = {}  # memo: few distinct scopes
        for lay in graph.layers:
            parts = layer_parts[lay.name]
            chain = chains.get(parts)
            if chain is None:
                chain = chains[parts] = tuple(
                    s for s in (_join(parts[: i + 1]) for i in range(len(parts))) if s in self.kept)
            self.chain[lay.name] = chain
            self.layers_under[""].append(lay.name)
            parent = ""
            for s in chain:
                if s not in self.children:
                    self.children[s] = []
                    self.layers_under[s] = []
                    self.parent[s] = parent
                    self.depth[s] = self.depth[parent] + 1
                    self.children[parent].append(("S", s))
                self.layers_under[s].append(lay.name)
                parent = s
            self.layer_scope[lay.name] = parent
            self.children[parent].append(("L", lay.name))
        # a group node is named by its scope unless a layer already has that name
        layer_names = set(self.layer_scope)
        self.group_ids: dict[str, str] = {
            s: (f"scope:{s}" if s in layer_names else s) for s in self.children if s}
        # each edge belongs to the deepest scope holding both ends, between two of its children
        self.scope_edges: dict[str, dict[tuple[Child, Child], list[tuple[str, str, str]]]] = {}
        # and an edge that leaves (enters) a scope below that one goes through its out (in) port
        self.ports_out: dict[str, dict[Child, None]] = {}
        self.ports_in: dict[str, dict[Child, None]] = {}
        common: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}  # memo per pair of chains
        for src, dst, tensor in graph.edge_tensors():
            pa, pb = self.chain[src], self.chain[dst]
            k = common.get((pa, pb))
            if k is None:
                k = 0
                while k < min(len(pa), len(pb)) and pa[k] == pb[k]:
                    k += 1
                common[(pa, pb)] = k
            ca: Child = ("L", src) if len(pa) == k else ("S", pa[k])
            cb: Child = ("L", dst) if len(pb) == k else ("S", pb[k])
            if ca == cb:
                continue  # a layer feeding itself: nothing to draw
            by_pair = self.scope_edges.setdefault(pa[k - 1] if k else "", {})
            by_pair.setdefault((ca, cb), []).append((src, dst, tensor))
            for j in range(k, len(pa)):
                inside: Child = ("S", pa[j + 1]) if j + 1 < len(pa) else ("L", src)
                self.ports_out.setdefault(pa[j], {})[inside] = None
            for j in range(k, len(pb)):
                inside = ("S", pb[j + 1]) if j + 1 < len(pb) else ("L", dst)
                self.ports_in.setdefault(pb[j], {})[inside] = None

    @property
    def scopes(self) -> list[str]:
        """The kept scopes, in order of first appearance."""
        return [s for s in self.children if s]

    def child_scopes(self, scope: str) -> list[str]:
        return [c for kind, c in self.children.get(scope, []) if kind == "S"]

    def shown_scope(self, scope: str) -> str:
        """The kept scope that shows a module path: itself, the scope a pass-through one leads
        to, or (for a single-layer scope) the kept scope its layer is shown in."""
        s = _join(_parts(scope))
        if not s or s in self.children:
            return s
        if s not in self.raw_scopes:
            raise KeyError(scope)
        t = s
        while t not in self.kept and len(self._raw_kids.get(t, ())) == 1:
            t = self._raw_kids[t][0]
        if t in self.kept:
            return t
        for a in reversed(scope_ancestors(s)):  # a single-layer scope
            if a in self.kept:
                return a
        return ""

    def ancestors(self, scope: str) -> list[str]:
        """A kept scope and its kept ancestors, outermost first."""
        out = []
        while scope:
            out.append(scope)
            scope = self.parent[scope]
        return out[::-1]

    def descendants(self, scope: str) -> list[str]:
        out, stack = [], list(self.child_scopes(scope))
        while stack:
            s = stack.pop()
            out.append(s)
            stack.extend(self.child_scopes(s))
        return out

    def visible_count(self, expanded: Iterable[str]) -> int:
        """How many boxes (layers and groups) show with these scopes expanded."""
        exp = set(expanded) | {""}
        n = 0
        stack = [""]
        while stack:
            s = stack.pop()
            for kind, c in self.children[s]:
                if kind == "S" and c in exp:
                    stack.append(c)
                else:
                    n += 1
        return n

    def normalize(self, expanded: Iterable[str]) -> frozenset[str]:
        """Kept scopes only (module paths mapped by :meth:`shown_scope`; unknown ones dropped),
        each with all its ancestors (a scope shows only if they are expanded)."""
        out: set[str] = set()
        for s in expanded:
            try:
                s = self.shown_scope(s)
            except KeyError:
                continue
            if s:
                out.update(self.ancestors(s))
        return frozenset(out)


def _signature(scope: str) -> str:
    """A scope with its numbers wildcarded: ``encoder.layer.N.attention`` and ``layerN.M`` repeat."""
    return ".".join(re.sub(r"\d+", "#", p) for p in _parts(scope))


def default_expanded(graph: LayerGraph | ScopeTree, max_visible: int = 150) -> frozenset[str]:
    """Scopes to open a model with, so that at most about ``max_visible`` boxes show.

    Breadth-first from the root; at each depth, scopes that repeat (the same path up to
    indices, like every block's ``attention``) are expanded together or not at all, cheapest
    first, while the count of visible boxes stays within ``max_visible``.  A scope with a
    single child costs nothing.  Deeper levels continue only under the expanded ones.
    """
    tree = graph if isinstance(graph, ScopeTree) else ScopeTree(graph)
    expanded: set[str] = set()
    count = tree.visible_count(expanded)
    level = tree.child_scopes("")
    while level:
        groups: dict[str, list[str]] = {}
        for s in level:
            groups.setdefault(_signature(s), []).append(s)
        costs = sorted((sum(len(tree.children[s]) - 1 for s in ss), i, ss)
                       for i, ss in enumerate(groups.values()))
        opened: list[str] = []
        for cost, _, ss in costs:
            if count + cost <= max_visible:
                expanded.update(ss)
                opened.extend(ss)
                count += cost
        level = [c for s in opened for c in tree.child_scopes(s)]
    return frozenset(expanded)


# --- Sugiyama, in this thread or in a child process -------------------------------------------

def _longest_path_ranks(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Each vertex one row below its lowest predecessor (cycles broken by igraph's Eades
    feedback arc set, as igraph's own Sugiyama layering does)."""
    import igraph  # heavy: imported only when a layout is made

    g = igraph.Graph(n=n, edges=edges, directed=True)
    if not g.is_dag():
        back = set(g.feedback_arc_set(method="eades"))
        edges = [(b, a) if i in back else (a, b) for i, (a, b) in enumerate(edges)]
        g = igraph.Graph(n=n, edges=edges, directed=True)
    rank = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succ[a].append(b)
    for v in g.topological_sorting():
        r = rank[v] + 1
        for w in succ[v]:
            if rank[w] < r:
                rank[w] = r
    return rank


def import_backend() -> None:
    """Import the layout library now (about 0.1 s), for a caller that knows a layout follows and
    has a quieter moment for it than the layout itself (the GUI's load worker, before the window
    gets busy drawing the new model)."""
    import igraph  # noqa: F401


def sugiyama(n: int, edges: list[tuple[int, int]], in_port: int = -1, out_port: int = -1,
             maxiter: int = MAXITER) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Rows, x order and edge bend points for ``n`` vertices (igraph's Sugiyama layout).

    Rows are longest-path layers; ``in_port`` gets a row of its own at the top and
    ``out_port`` one at the bottom (where edges enter and leave a frame).  Returns the row and
    x of each vertex and the (x, row) bend points of all edges, edge ``i``'s being
    ``points[offsets[i]:offsets[i + 1]]`` (one per row it crosses).
    """
    import igraph  # heavy: imported only when a layout is made

    inner = [(a, b) for a, b in edges if a not in (in_port, out_port) and b not in (in_port, out_port)]
    rank = _longest_path_ranks(n, inner)
    if in_port >= 0:
        rank = [r + 1 for r in rank]
        rank[in_port] = 0
    if out_port >= 0:
        rank[out_port] = max((r for i, r in enumerate(rank) if i != out_port), default=0) + 1
    g = igraph.Graph(n=n, edges=edges, directed=True)
    lay = g.layout_sugiyama(layers=rank, maxiter=maxiter)
    # numpy arrays, not lists of tuples: unpickling them from the child process is a copy, not
    # a long call that holds the GIL (and so the GUI thread) for a big graph
    xs = np.array([x for x, _ in lay.coords[:n]], dtype=float)
    offsets = np.cumsum([0] + [len(r) for r in lay.edge_routing])
    points = np.array([p[:2] for r in lay.edge_routing for p in r], dtype=float).reshape(-1, 2)
    return np.array(rank, dtype=np.int64), xs, (points, offsets)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _process_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: a clean interpreter (forking a process that runs Qt threads is unsafe).
            # Frozen builds must call multiprocessing.freeze_support() first thing in main.
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def shutdown_process_pool() -> None:
    """Stop the child process used for big layouts (it is started again when needed)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_process_pool)


def _sugiyama_anywhere(n: int, edges: list[tuple[int, int]], in_port: int, out_port: int,
                       progress: Progress | None):
    if n <= PROCESS_THRESHOLD:
        return sugiyama(n, edges, in_port, out_port)
    try:
        future = _process_pool().submit(sugiyama, n, edges, in_port, out_port)
    except (RuntimeError, OSError):  # no child process possible here: lay out in this thread
        return sugiyama(n, edges, in_port, out_port)
    while True:
        try:
            return future.result(timeout=0.05)
        except concurrent.futures.TimeoutError:
            if progress is not None and progress.cancelled:
                future.cancel()
                progress.check()
        except concurrent.futures.process.BrokenProcessPool:
            shutdown_process_pool()
            return sugiyama(n, edges, in_port, out_port)


# --- the layout -------------------------------------------------------------------------------

@dataclass
class _ScopePlacement:
    """Sugiyama result for one scope's children (independent of sizes, so cached).

    Besides the children it may hold two ports, ``("P", "in:" + scope)`` in a row of its own at
    the top and ``("P", "out:" + scope)`` at the bottom: edges entering or leaving the scope
    are routed through them, around the boxes inside, instead of across them.
    """

    children: list[Child]
    rank: list[int]
    ux: list[float]
    route_of: dict[tuple[Child, Child], int]  # edge between two children -> index in routes
    routes: list[list[tuple[float, int]]]  # bend points (unit x, row) from source to target


def _in_port(scope: str) -> Child:
    return ("P", "in:" + scope)


def _out_port(scope: str) -> Child:
    return ("P", "out:" + scope)


class HierarchicalLayout:
    """Lays out one graph for any set of expanded scopes; caches per-scope placements.

    Thread-safe: one layout runs at a time (the UI runs it in a worker thread).
    """

    def __init__(self, graph: LayerGraph, style: LayoutStyle | None = None) -> None:
        self.graph = graph
        self.style = style or LayoutStyle()
        self._tree: ScopeTree | None = None
        self._placements: dict[str, _ScopePlacement] = {}
        self._lock = threading.Lock()
        self._tree_lock = threading.Lock()

    @property
    def tree(self) -> ScopeTree:
        """The scope tree (built on first use, by whichever thread asks first)."""
        if self._tree is None:
            with self._tree_lock:
                if self._tree is None:
                    self._tree = ScopeTree(self.graph)
        return self._tree

    @property
    def has_tree(self) -> bool:
        return self._tree is not None

    def cached_scopes(self) -> set[str]:
        """Scopes whose children are laid out already (for tests and diagnostics)."""
        return set(self._placements)

    def default_expanded(self, max_visible: int = 150) -> frozenset[str]:
        return default_expanded(self.tree, max_visible)

    def layout(self, expanded: Iterable[str] = (), progress: Progress | None = None) -> VisibleGraph:
        """Boxes, frames and edges with ``expanded`` scopes open (module paths are mapped with
        :meth:`ScopeTree.normalize`: unknown ones are ignored, ancestors are opened too)."""
        with self._lock:
            return self._layout(self.tree.normalize(expanded), progress)

    # ---------------------------------------------------------------------------------------
    def _placement(self, scope: str, progress: Progress | None) -> _ScopePlacement:
        pl = self._placements.get(scope)
        if pl is not None:
            return pl
        tree = self.tree
        children = list(tree.children[scope])
        pairs = list(tree.scope_edges.get(scope, {}))
        if scope and tree.ports_in.get(scope):
            children.append(_in_port(scope))
            pairs += [(_in_port(scope), c) for c in tree.ports_in[scope]]
        if scope and tree.ports_out.get(scope):
            children.append(_out_port(scope))
            pairs += [(c, _out_port(scope)) for c in tree.ports_out[scope]]
        index = {c: i for i, c in enumerate(children)}
        edges = [(index[a], index[b]) for a, b in pairs]
        rank_a, ux_a, (points, offsets) = _sugiyama_anywhere(
            len(children), edges, index.get(_in_port(scope), -1), index.get(_out_port(scope), -1), progress)
        rank, ux, pts_all, offs = rank_a.tolist(), ux_a.tolist(), points.tolist(), offsets.tolist()
        routes = [pts_all[offs[i]:offs[i + 1]] for i in range(len(pairs))]
        rts: list[list[tuple[float, int]]] = []
        for (a, b), r in zip(pairs, routes, strict=True):
            ra, rb = rank[index[a]], rank[index[b]]
            lo, hi = min(ra, rb), max(ra, rb)
            pts = sorted(((x, round(y)) for x, y in r if lo < round(y) < hi), key=lambda p: p[1],
                         reverse=ra > rb)  # source first, also for an edge that points up
            rts.append(pts)
        pl = _ScopePlacement(children, rank, ux, {p: i for i, p in enumerate(pairs)}, rts)
        self._placements[scope] = pl
        return pl

    def _layout(self, expanded: frozenset[str], progress: Progress | None) -> VisibleGraph:
        tree, st = self.tree, self.style
        todo = [s for s in ["", *sorted(expanded, key=lambda s: tree.depth[s])] if s not in self._placements]
        for i, s in enumerate(todo):
            if progress is not None:
                progress.update(i / max(1, len(todo)) * 0.8, f"Laying out {len(tree.children[s])} nodes…")
            self._placement(s, progress)
        if progress is not None:
            progress.update(0.85, "Placing boxes…")

        # sizes bottom-up; each expanded scope's children relative to its content origin
        rel: dict[str, dict[Child, tuple[float, float, float, float]]] = {}
        dummies: dict[str, list[list[tuple[float, float, float]]]] = {}  # per route: (x, top, bottom)
        size: dict[str, tuple[float, float]] = {}
        for s in sorted(["", *expanded], key=lambda s: -tree.depth[s]):
            w, h = self._place_children(s, expanded, size, rel, dummies)
            size[s] = (w, h) if s == "" else (w + 2 * st.pad, h + 2 * st.pad + st.header_h)

        nodes: list[VNode] = []
        frames: list[VFrame] = []
        origin: dict[str, tuple[float, float]] = {"": (0.0, 0.0)}
        box: dict[Child, tuple[float, float, float, float]] = {}  # absolute, per child of an open scope
        stack = [""]
        while stack:
            s = stack.pop()
            ox, oy = origin[s]
            for c, (x, y, w, h) in rel[s].items():
                ax, ay = ox + x, oy + y
                box[c] = (ax, ay, w, h)
                kind, name = c
                if kind == "L":
                    sc = tree.layer_scope[name]
                    op = self.graph.layer(name).op_type
                    nodes.append(VNode(name, layer_label(name, sc), op, "layer", [name], ax, ay, w, h, sc))
                elif kind == "S" and name in expanded:
                    frames.append(VFrame(name, short_label(name, tree.parent[name]), tree.depth[name],
                                         tree.layers_under[name], ax, ay, w, h, st.header_h))
                    origin[name] = (ax + st.pad, ay + st.pad + st.header_h)
                    stack.append(name)
                elif kind == "S":
                    nodes.append(VNode(tree.group_ids[name], short_label(name, tree.parent[name]), "",
                                       "group", list(tree.layers_under[name]), ax, ay, w, h, name))
        frames.sort(key=lambda f: f.depth)
        abs_dummies = {s: [[(ox + x, oy + t, oy + b) for x, t, b in route] for route in dummies[s]]
                       for s, (ox, oy) in origin.items()}
        edges = self._edges(expanded, box, abs_dummies)
        w, h = size[""]
        return VisibleGraph(nodes, edges, frames, expanded, w, h)

    def _place_children(self, s: str, expanded: frozenset[str], size: dict[str, tuple[float, float]],
                        rel: dict, dummies: dict) -> tuple[float, float]:
        """Rows from the cached ranks; x from the cached order, spread for the real box sizes.

        igraph places unit-width vertices on a half-unit grid.  Boxes here differ in width (an
        expanded scope is as wide as its content), so each half-unit column gets one x,
        the smallest that keeps every row's neighbours apart (a longest path over columns):
        what was vertically aligned stays aligned, and wide frames push only what is beside them.
        """
        st = self.style
        pl = self._placements[s]
        sizes = []
        for kind, name in pl.children:
            if kind == "L":
                sizes.append((st.node_w, st.node_h))
            elif kind == "P":
                sizes.append((st.dummy_w, 0.0))
            elif name in expanded:
                sizes.append(size[name])
            else:
                sizes.append((st.group_w, st.group_h))
        nrows = max(pl.rank, default=-1) + 1
        row_h = [0.0] * nrows
        rows: list[list[tuple[int, float, int, int]]] = [[] for _ in range(nrows)]  # (column, w, kind, key)
        for i, (r, x) in enumerate(zip(pl.rank, pl.ux, strict=True)):
            rows[r].append((round(2 * x), sizes[i][0], 0, i))
            row_h[r] = max(row_h[r], sizes[i][1])
        for ei, route in enumerate(pl.routes):
            for pi, (x, r) in enumerate(route):
                rows[r].append((round(2 * x), st.dummy_w, 1, ei * 100000 + pi))
        need: dict[int, list[tuple[int, float]]] = {}  # column -> [(column to its left, min distance)]
        for row in rows:
            row.sort()
            for j in range(1, len(row)):
                (c0, w0, k0, _), (c1, w1, k1, key) = row[j - 1], row[j]
                if c1 <= c0:  # igraph keeps vertices of a row apart; guard against rounding
                    c1 = c0 + 1
                    row[j] = (c1, w1, k1, key)
                gap = st.hgap if k0 == 0 and k1 == 0 else st.hgap / 3
                need.setdefault(c1, []).append((c0, (w0 + w1) / 2 + gap))
        xcol: dict[int, float] = {}
        prev = None
        for c in sorted({t[0] for row in rows for t in row}):
            x = xcol[prev] if prev is not None else 0.0
            for c0, d in need.get(c, ()):
                x = max(x, xcol[c0] + d)
            xcol[c] = x
            prev = c
        cx_node = [0.0] * len(pl.children)
        cx_dummy: dict[int, float] = {}
        for row in rows:
            for c, _, kind, key in row:
                if kind == 0:
                    cx_node[key] = xcol[c]
                else:
                    cx_dummy[key] = xcol[c]
        # rows top-down; a port's row has no height and half a gap
        port_rows = {pl.rank[i] for i, (kind, _) in enumerate(pl.children) if kind == "P"}
        row_y = []
        y = 0.0
        for r, h in enumerate(row_h):
            if r:
                y += st.vgap / 2 if (r in port_rows or r - 1 in port_rows) else st.vgap
            row_y.append(y)
            y += h
        height = y
        lefts = [cx_node[i] - sizes[i][0] / 2 for i in range(len(sizes))]
        lefts += [x - st.dummy_w / 2 for x in cx_dummy.values()]
        rights = [cx_node[i] + sizes[i][0] / 2 for i in range(len(sizes))]
        rights += [x + st.dummy_w / 2 for x in cx_dummy.values()]
        left, right = min(lefts, default=0.0), max(rights, default=0.0)
        out = {}
        for i, c in enumerate(pl.children):
            w, h = sizes[i]
            r = pl.rank[i]
            out[c] = (cx_node[i] - w / 2 - left, row_y[r] + (row_h[r] - h) / 2, w, h)
        rel[s] = out
        dummies[s] = [[(cx_dummy[ei * 100000 + pi] - left, row_y[r], row_y[r] + row_h[r])
                       for pi, (_, r) in enumerate(route)] for ei, route in enumerate(pl.routes)]
        return max(right - left, 0.0), height

    def _containers(self, c: Child) -> tuple[str, ...]:
        """The open scopes around a visible box, outermost first."""
        if c[0] == "L":
            return self.tree.chain[c[1]]
        return tuple(self.tree.ancestors(c[1])[:-1])

    def _edges(self, expanded: frozenset[str], box: dict, dummies: dict) -> list[VEdge]:
        tree, graph = self.tree, self.graph
        # every layer's visible box: itself, or its outermost collapsed ancestor
        rep: dict[str, Child] = {}
        for name, chain in tree.chain.items():
            c: Child = ("L", name)
            for a in chain:
                if a not in expanded:
                    c = ("S", a)
                    break
            rep[name] = c
        merged: dict[tuple[Child, Child], list] = {}
        for s, pairs in tree.scope_edges.items():
            if s and s not in expanded:
                continue
            for (ca, cb), triples in pairs.items():
                for src, dst, tensor in triples:
                    key = (rep[src], rep[dst])
                    entry = merged.get(key)
                    if entry is None:
                        merged[key] = entry = [{}, s, ca, cb]
                    entry[0][tensor] = None

        def bends(scope: str, a: Child, b: Child, line: list) -> None:
            for x, top, bottom in dummies[scope][self._placements[scope].route_of[(a, b)]]:
                line.append((x, top))
                line.append((x, bottom))

        edges = []
        for (va, vb), (tensors, s, ca, cb) in merged.items():
            ax, ay, aw, ah = box[va]
            bx, by, bw, _ = box[vb]
            line = [(ax + aw / 2, ay + ah)]
            depth = tree.depth[s]
            e = va
            for t in reversed(self._containers(va)[depth:]):  # out through each enclosing frame
                bends(t, e, _out_port(t), line)
                px, py, pw, _ = box[_out_port(t)]
                _, fy, _, fh = box[("S", t)]
                line += [(px + pw / 2, py), (px + pw / 2, fy + fh)]
                e = ("S", t)
            bends(s, ca, cb, line)
            inner = self._containers(vb)[depth:]
            for k, t in enumerate(inner):  # in through each enclosing frame
                px, py, pw, _ = box[_in_port(t)]
                line += [(px + pw / 2, box[("S", t)][1]), (px + pw / 2, py)]
                bends(t, _in_port(t), ("S", inner[k + 1]) if k + 1 < len(inner) else vb, line)
            line.append((bx + bw / 2, by))
            tensors = list(tensors)
            shape_lines = []
            for t in tensors[:MAX_TENSOR_LINES]:
                info = graph.tensors.get(t)
                shp = "?" if info is None or info.shape is None else "×".join(str(d) for d in info.shape)
                shape_lines.append(f"{t}: {shp}")
            if len(tensors) > MAX_TENSOR_LINES:
                shape_lines.append(f"… {len(tensors) - MAX_TENSOR_LINES} more tensors")
            edges.append(VEdge(self._vid(va), self._vid(vb), tensors, "\n".join(shape_lines), line))
        self._spread_ends(edges, box)
        return edges

    def _spread_ends(self, edges: list[VEdge], box: dict) -> None:
        """Edges meeting at one box side get their own spots on it, ordered like where they
        come from, so a residual and the main path do not share one arrow."""
        ids = {self._vid(c): c for c in box if c[0] != "P"}
        for end in (0, -1):
            at: dict[str, list[VEdge]] = {}
            for e in edges:
                at.setdefault(e.src if end == 0 else e.dst, []).append(e)
            for node, es in at.items():
                if len(es) < 2:
                    continue
                x, _, w, _ = box[ids[node]]
                nxt = 1 if end == 0 else -2
                # edges heading to the same next point (a frame's port) keep sharing one spot
                spots = sorted({e.points[nxt] for e in es})
                if len(spots) < 2:
                    continue
                span = min(w * 0.6, 16.0 * (len(spots) - 1))
                where = {p: x + w / 2 - span / 2 + span * k / (len(spots) - 1) for k, p in enumerate(spots)}
                for e in es:
                    e.points[end] = (where[e.points[nxt]], e.points[end][1])

    def _vid(self, c: Child) -> str:
        return c[1] if c[0] == "L" else self.tree.group_ids[c[1]]


def layout_graph(graph: LayerGraph, expanded: Iterable[str] | None = None,
                 progress: Progress | None = None, style: LayoutStyle | None = None) -> VisibleGraph:
    """One-off layout (no cache kept): ``expanded=None`` uses :func:`default_expanded`."""
    lay = HierarchicalLayout(graph, style)
    return lay.layout(lay.default_expanded() if expanded is None else expanded, progress)


def group_id(tree: ScopeTree, scope: str) -> str:
    """The visible node id of a collapsed scope (the scope itself unless a layer has that name)."""
    return tree.group_ids[scope]

