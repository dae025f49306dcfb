"""The layer graph view: a heatmap of per-layer metrics, collapsible by module scope.

Public API (what the main window uses)::

    from effstudio.ui.graph import GraphView

    view = GraphView(selection: SelectionModel, parent=None)
    view.set_graph(graph: LayerGraph | None)   # lays out in the background, then draws
    view.set_metric(values: dict[str, float] | None, label: str, unit: str, log: bool = False)
        # layer name -> value; a missing layer is unknown (drawn hatched grey, "n/a" in its
        # tooltip), never the colormap's minimum.  Groups and frames show the sum of their
        # layers' known values ("≥" when some are unknown).  None: no metric, neutral boxes.
    view.set_colormap(name: str)                # "viridis" (default), "inferno", "magma", ...
    view.fit()
    view.search(pattern: str) -> list[str]      # regex on layer name or op type, ignoring case:
        # selects the matches, expands the scopes hiding them, centers on the first
    view.expand(scope) ; view.collapse(scope) ; view.expand_all_to_depth(d)
    view.expanded() -> frozenset[str]           # the expanded scopes
    view.center_on(name)                        # a layer or a scope
    view.sig_layout_ready                       # Signal(): a layout has been drawn (after
                                                # set_graph, expand, collapse, search, ...)
    view.node_fill(layer_or_group_id) -> QColor ; view.node_value(id) ; view.visible_nodes()
    view.wait_idle(timeout_s)                   # block until no layout runs (tests, shutdown)
    view.search_box                             # the search overlay (Ctrl+F focuses it);
                                                # focus_search() for a toolbar action

A collapsed scope's box id is the scope itself (``encoder.layer.3``) unless a layer has that
exact name (then ``scope:encoder.layer.3``); ``node_fill``/``node_value`` accept either.
Selection is the shared :class:`~effstudio.ui.selection.SelectionModel`: the view sets it
(click, Ctrl+click, rubber band, search) and follows it (highlight, center on the current).
Mouse and keys: see :mod:`effstudio.ui.graph.view`.  The layout itself is Qt-free:
:mod:`effstudio.core.layout`.
"""

from effstudio.ui.graph.view import GraphView

__all__ = ["GraphView"]
