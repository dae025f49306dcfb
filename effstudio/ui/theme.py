"""Light and dark palettes (Fusion style) and the matching plot colors."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

THEMES = ("light", "dark")


@dataclass(frozen=True)
class PlotColors:
    background: str
    foreground: str
    bar: str
    bar_selected: str
    grid_alpha: float = 0.25


PLOT_COLORS = {
    "light": PlotColors(background="#ffffff", foreground="#333333", bar="#4c78a8", bar_selected="#f58518"),
    "dark": PlotColors(background="#1e1f22", foreground="#d0d0d0", bar="#6a9fd8", bar_selected="#ffb347"),
}


def _palette(name: str) -> QPalette:
    p = QPalette()
    if name == "dark":
        window, base, alt, text = QColor("#2b2d30"), QColor("#1e1f22"), QColor("#26282b"), QColor("#dfe1e5")
        button, highlight, link = QColor("#3c3f41"), QColor("#2f65ca"), QColor("#6aa7ff")
        disabled = QColor("#7a7e85")
    else:
        window, base, alt, text = QColor("#f3f3f3"), QColor("#ffffff"), QColor("#f5f7fa"), QColor("#1f1f1f")
        button, highlight, link = QColor("#e9e9e9"), QColor("#3874d8"), QColor("#1a5fb4")
        disabled = QColor("#9a9a9a")
    roles = {
        QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: alt,
        QPalette.ColorRole.ToolTipBase: base, QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.Text: text, QPalette.ColorRole.Button: button,
        QPalette.ColorRole.ButtonText: text, QPalette.ColorRole.Highlight: highlight,
        QPalette.ColorRole.HighlightedText: QColor("#ffffff"), QPalette.ColorRole.Link: link,
        QPalette.ColorRole.PlaceholderText: disabled, QPalette.ColorRole.BrightText: QColor("#ff5555"),
    }
    for role, color in roles.items():
        p.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return p


def apply_theme(app: QApplication, name: str) -> None:
    """Set the Fusion style and the named palette on the whole application."""
    if name not in THEMES:
        name = "light"
    app.setStyle("Fusion")
    app.setPalette(_palette(name))
    app.setProperty("effstudio_theme", name)


def current_theme() -> str:
    app = QApplication.instance()
    name = app.property("effstudio_theme") if app is not None else None
    return name if name in THEMES else "light"


def plot_colors() -> PlotColors:
    return PLOT_COLORS[current_theme()]
