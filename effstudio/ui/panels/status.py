"""The status bar's permanent widgets: the model's totals, uncounted ops, latency, the status
bar's temporary messages, and the task progress bar with its Cancel button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QSizePolicy, QToolButton, QWidget

from effstudio.core.graph import LayerGraph
from effstudio.core.latency.stats import noise_warning
from effstudio.core.metrics.table import MetricsTable
from effstudio.ui import numbers
from effstudio.ui.icons import icon


def latency_summary(metrics: MetricsTable) -> tuple[str, str] | None:
    """(``"6.21 ms ± 0.30 ms"``, tooltip) from the end-to-end stats in ``metrics.totals["latency_ms"]``
    (median, p10, p90, runs): ± is half the p10–p90 range."""
    e2e = metrics.totals.get("latency_ms")
    if not isinstance(e2e, dict) or e2e.get("median") is None:
        return None
    text = numbers.ms(e2e["median"])
    tip = [f"end to end: median {numbers.ms(e2e['median'])}"]
    if e2e.get("p10") is not None and e2e.get("p90") is not None:
        text += f" ± {numbers.ms((e2e['p90'] - e2e['p10']) / 2)}"
        tip.append(f"p10–p90: {numbers.ms(e2e['p10'])} – {numbers.ms(e2e['p90'])}")
    device = metrics.totals.get("latency_device")
    if isinstance(device, str) and device:
        if not device.startswith("CPU"):
            text += f" · {device.split(' (')[0]}"  # the GPU is the exception worth seeing at a glance
        tip.append(f"measured on {device}")
    if e2e.get("runs"):
        tip.append(f"{int(e2e['runs'])} timed runs after warm-up")
    ratio = metrics.totals.get("latency_sum_ratio")
    if ratio is not None:
        tip.append(f"sum of per-layer times = {ratio * 100:.0f} % of end to end")
    note = metrics.notes.get("latency_ms")
    if note:
        tip.append(note)
    return text, "\n".join(tip)


class StatusPanel(QWidget):
    """Totals | uncounted ops | latency | message | progress + Cancel (only while a task runs).

    The status bar draws its temporary messages (``showMessage``, action status tips) left of its
    permanent widgets, and this panel is one that takes the whole width: there the message would
    sit under the totals.  It is shown here instead (:meth:`show_message`, connected to the bar's
    ``messageChanged``), in the room between the latency and the progress bar.
    """

    sig_cancel = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.totals_label = QLabel(self)
        self.totals_label.setObjectName("status_totals")
        self.uncounted_label = QLabel(self)
        self.uncounted_label.setObjectName("status_uncounted")
        self.latency_label = QLabel(self)
        self.latency_label.setObjectName("status_latency")
        self.message_label = QLabel(self)
        self.message_label.setObjectName("status_message")
        self.message_label.setTextFormat(Qt.TextFormat.PlainText)
        # takes the free room and no more: a long message is cut, never widens the window
        self.message_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setFixedWidth(160)
        self.progress.setTextVisible(False)
        self.task_label = QLabel(self)
        self.task_label.setObjectName("status_task")
        self.cancel_button = QToolButton(self)
        self.cancel_button.setIcon(icon("cancel"))
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.clicked.connect(self.sig_cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.setSpacing(12)
        layout.addWidget(self.totals_label)
        layout.addWidget(self.uncounted_label)
        layout.addWidget(self.latency_label)
        layout.addWidget(self.message_label, 1)
        layout.addWidget(self.task_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.cancel_button)
        # hidden, they keep their room: showing them must not change the status bar's height, which
        # re-lays out the whole window (and repaints the charts) at the start of every task
        for w in (self.progress, self.task_label, self.cancel_button):
            policy = w.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            w.setSizePolicy(policy)
        self.set_busy(False)

    def set_model(self, graph: LayerGraph | None, metrics: MetricsTable) -> None:
        if graph is None:
            self.totals_label.setText("No model open")
            self.uncounted_label.clear()
            return
        t = graph.totals()
        macs = metrics.column("macs")
        parts = [f"<b>{t['layers']}</b> layers", f"<b>{numbers.si(t['params'])}</b> params",
                 f"<b>{numbers.nbytes(t['weight_bytes'])}</b> weights"]
        total_macs = metrics.totals.get("macs", sum(macs.values()) if macs else None)
        if total_macs is not None:
            parts.append(f"<b>{numbers.si(total_macs)}</b> MACs")
        peak = metrics.totals.get("peak_activation_bytes")
        if peak is not None:
            parts.append(f"<b>{numbers.nbytes(peak)}</b> peak activations")
        self.totals_label.setText(" · ".join(parts))
        tip = "Params and weight bytes count every stored tensor once.\n1 MAC = 2 FLOPs."
        if "flops" in metrics.totals:
            tip += f"\nFLOPs: {numbers.si(metrics.totals['flops'])}"
        self.totals_label.setToolTip(tip)
        unc = metrics.uncounted_ops
        if unc:
            n = sum(int(u.get("count", 1)) for u in unc)
            self.uncounted_label.setText(f"<span style='color:#c77c02'>uncounted: {n} ops</span>")
            lines = []
            for u in unc:
                reason = f" — {u['reason']}" if u.get("reason") else ""
                lines.append(f"{u.get('op_type', '?')} × {u.get('count', 1)}{reason}")
            self.uncounted_label.setToolTip("Ops whose MACs/FLOPs could not be counted (shown as —):\n"
                                            + "\n".join(lines))
        else:
            self.uncounted_label.clear()
            self.uncounted_label.setToolTip("")

    def show_message(self, text: str) -> None:
        """Show the status bar's current temporary message ("" clears it)."""
        self.message_label.setText(text)
        self.message_label.setToolTip(text)

    def set_latency(self, state: str, detail: str = "", metrics: MetricsTable | None = None) -> None:
        summary = latency_summary(metrics) if (state == "done" and metrics is not None) else None
        if state == "measuring":
            self.latency_label.setText("<i>measuring latency…</i>")
        elif state == "done" and summary:
            warning = noise_warning(metrics.totals.get("latency_ms") or {})
            noisy = " <span style='color:#d35400'>⚠ noisy</span>" if warning else ""
            self.latency_label.setText(f"latency <b>{summary[0]}</b> (median, measured){noisy}")
            detail = f"Noisy: {warning}\n\n{summary[1]}" if warning else summary[1]
        elif state == "failed":
            self.latency_label.setText("<span style='color:#c0392b'>latency: failed</span>")
        elif state == "cancelled":
            self.latency_label.setText("latency: not measured (cancelled)")
        else:
            self.latency_label.clear()
        self.latency_label.setToolTip(detail)

    def set_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.task_label.setVisible(busy)
        if not busy:
            self._set_bar(0)
            self.task_label.clear()

    def set_progress(self, fraction: float, message: str) -> None:
        self._set_bar(int(fraction * 1000))
        self.task_label.setText(message[:60])
        self.task_label.setToolTip(message)

    def _set_bar(self, value: int) -> None:
        """Set the bar's value; it is painted with the window's next update, not at once.

        ``QProgressBar.setValue`` repaints the bar on the spot, and a repaint flushes every dirty
        widget of the window with it: each progress signal of an open painted the new model's
        table, chart and graph inside it (40-60 ms stops of the event loop).  With updates off
        the bar only records the value; turning them on again schedules an ordinary update.
        """
        bar = self.progress
        if bar.value() == value:
            return
        bar.setUpdatesEnabled(False)
        try:
            bar.setValue(value)
        finally:
            bar.setUpdatesEnabled(True)
