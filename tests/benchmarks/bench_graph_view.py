"""Graph view on a synthetic 10k-layer model: layout + first draw, repaint per pan/zoom step,
and how long the GUI thread went without running a 10 ms heartbeat timer meanwhile.

    .venv/bin/python tests/benchmarks/bench_graph_view.py [N_LAYERS]

Goals: open (layout + draw, hierarchical collapse) <= 2 s; heartbeat gap <= 50 ms.  The unscoped
graph opens in synthetic groups of consecutive layers (``core.layout.run_scopes``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication
from synthetic_graphs import transformer_graph

from effstudio.core import layout as core_layout
from effstudio.ui.graph import GraphView
from effstudio.ui.selection import SelectionModel


class Heartbeat:
    """A 10 ms timer on the GUI thread; records the longest gap between two of its ticks."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.longest = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def start(self) -> None:
        self.last, self.longest = time.perf_counter(), 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        self._tick()
        return self.longest


def run_until_ready(view: GraphView, start) -> tuple[float, float]:
    """Seconds from ``start()`` to the layout drawn on screen, and the longest heartbeat gap."""
    hb = Heartbeat()
    loop = QEventLoop()
    view.sig_layout_ready.connect(loop.quit)
    hb.start()
    t0 = time.perf_counter()
    start()
    if view.is_busy():
        loop.exec()
    view.view.viewport().repaint()
    dt = time.perf_counter() - t0
    gap = hb.stop()
    view.sig_layout_ready.disconnect(loop.quit)
    return dt, gap


def repaint_ms(view: GraphView, step, n: int = 10) -> float:
    times = []
    for _ in range(n):
        step()
        t = time.perf_counter()
        view.view.viewport().repaint()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def pan_zoom(view: GraphView, label: str) -> None:
    hbar = view.view.horizontalScrollBar()
    vbar = view.view.verticalScrollBar()

    def pan():
        vbar.setValue(vbar.value() + 40)
        hbar.setValue(hbar.value() + 7)

    def zoom_in():
        view.view.zoom(1.05)

    def zoom_out():
        view.view.zoom(1 / 1.05)

    view.fit()
    fit_scale = view.view.current_scale()
    far_zoom = repaint_ms(view, zoom_in)
    view.view.resetTransform()
    view.view.scale(1.0, 1.0)
    view.center_on(view.visible_nodes()[len(view.visible_nodes()) // 2].id)
    near_pan = repaint_ms(view, pan)
    near_zoom = repaint_ms(view, zoom_out)
    print(f"  {label}: repaint per step (median): zoom at fit (scale {fit_scale:.3f}) {far_zoom:.1f} ms, "
          f"pan at 100 % {near_pan:.1f} ms, zoom at 100 % {near_zoom:.1f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    app = QApplication.instance() or QApplication([])
    view = GraphView(SelectionModel())
    view.resize(1400, 900)
    view.show()
    app.processEvents()

    for scoped in (True, False):
        g = transformer_graph(n, blocks=12, scoped=scoped)
        values = {lay.name: float(lay.params) for lay in g.layers}
        kind = "scoped like a 12-block transformer" if scoped else "unscoped (every layer top level)"
        print(f"{len(g.layers)} layers, {len(g.edge_tensors())} edges, {kind}")

        def open_graph(g=g, values=values):
            view.set_graph(g)
            view.set_metric(values, "Parameters", "")

        dt, gap = run_until_ready(view, open_graph)
        print(f"  open (layout + draw): {dt:.2f} s with {len(view.visible_nodes())} boxes shown; "
              f"longest heartbeat gap {gap * 1000:.0f} ms")
        pan_zoom(view, "as opened")
        if scoped:
            tree = view._hl.tree
            dt, gap = run_until_ready(view, lambda: view.expand("encoder.layer.5.attention.self"))
            print(f"  expand one scope: {dt:.2f} s ({len(view.visible_nodes())} boxes); "
                  f"gap {gap * 1000:.0f} ms")
            dt, gap = run_until_ready(view, lambda tree=tree: view.expand_all_to_depth(99))
            print(f"  expand everything: {dt:.2f} s ({len(view.visible_nodes())} boxes); "
                  f"gap {gap * 1000:.0f} ms")
            pan_zoom(view, "everything expanded")
            dt, gap = run_until_ready(view, lambda: view.collapse("encoder.layer"))
            print(f"  collapse the encoder again (cached): {dt:.2f} s; gap {gap * 1000:.0f} ms")
        else:
            dt, gap = run_until_ready(view, open_graph)
            print(f"  open again: {dt:.2f} s; gap {gap * 1000:.0f} ms")
            dt, gap = run_until_ready(view, lambda: view.expand_all_to_depth(99))
            print(f"  expand everything: {dt:.2f} s ({len(view.visible_nodes())} boxes); "
                  f"gap {gap * 1000:.0f} ms")
            pan_zoom(view, "everything expanded")
    view.close()
    core_layout.shutdown_process_pool()


if __name__ == "__main__":
    main()
