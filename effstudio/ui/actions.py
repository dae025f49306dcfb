"""Every menu and toolbar action, declared in one table, and the adapter that makes QActions.

An :class:`Action` names its callback (a method of the window) and its enablement (a key of
the window's ``action_context()``: ``has_model``, ``busy``, ``has_selection``); a
:class:`Submenu` names the method that fills it when it is about to show.  Menus are built
from this table in order; ``SEPARATOR`` entries split groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu, QMenuBar

from effstudio.ui.icons import icon

MENUS = ("File", "Edit", "View", "Model", "Help")


@dataclass(frozen=True)
class Action:
    id: str
    title: str
    menu: str
    callback: str  # method name on the window
    shortcut: str | QKeySequence.StandardKey | None = None
    icon: str | None = None  # resources/icons/<icon>.svg
    enablement: str | None = None  # action_context() key that must be true
    tip: str = ""
    checkable: bool = False
    toolbar: bool = False


@dataclass(frozen=True)
class Submenu:
    id: str
    title: str
    menu: str
    filler: str  # method name on the window: filler(QMenu) fills it before it shows
    icon: str | None = None
    enablement: str | None = None


@dataclass(frozen=True)
class Separator:
    menu: str


SK = QKeySequence.StandardKey

ACTIONS: tuple[Action | Submenu | Separator, ...] = (
    Action("open", "&Open…", "File", "open_dialog", SK.Open, "open",
           tip="Open a model (.onnx .pt2 .pt .ts)", toolbar=True),
    Submenu("recent", "Open &Recent", "File", "fill_recent_menu"),
    Submenu("demos", "&Demo Models", "File", "fill_demo_menu", icon="demo"),
    Separator("File"),
    Action("quit", "&Quit", "File", "close", "Ctrl+Q", "quit"),

    Action("select_all", "Select &All Layers", "Edit", "select_all", "Ctrl+A", "select-all",
           enablement="has_model"),
    Action("clear_selection", "&Clear Selection", "Edit", "clear_selection", "Esc", "clear-selection",
           enablement="has_selection"),
    Separator("Edit"),
    Submenu("select_op", "Select by &Op Type", "Edit", "fill_op_type_menu", enablement="has_model"),
    Action("select_regex", "Select by &Name…", "Edit", "select_by_regex_dialog", "Ctrl+Shift+F",
           enablement="has_model", tip="Select the layers whose name matches a regular expression"),
    Action("select_subtree", "Select Module &Subtree", "Edit", "select_current_subtree", "Ctrl+Shift+A",
           enablement="has_selection", tip="Select every layer in the current layer's module scope"),

    Action("find", "&Find Layer…", "View", "focus_search", SK.Find, "search"),
    Action("fit", "&Fit Graph", "View", "fit_view", "F", "fit", enablement="has_model"),
    Action("log_scale", "&Log Scale", "View", "set_log_scale", "Ctrl+L", "log-scale", checkable=True,
           tip="Color and chart the metric on a logarithmic scale"),
    Separator("View"),
    Submenu("theme", "&Theme", "View", "fill_theme_menu", icon="theme"),
    Submenu("panels", "&Panels", "View", "fill_panels_menu"),

    Action("measure_latency", "&Measure Latency Again", "Model", "measure_latency", "Ctrl+R", "latency",
           enablement="has_model", tip="Time the model on this machine (runs in the background)"),
    Submenu("measure_on", "Measure &On", "Model", "fill_device_menu"),
    Action("cancel", "&Cancel Task", "Model", "cancel_tasks", None, "cancel", enablement="busy"),

    Action("about", "&About effstudio", "Help", "show_about", None, "info"),
)


def build_menus(window: QMainWindow, menubar: QMenuBar) -> dict[str, QAction]:
    """Create the menus and actions of :data:`ACTIONS` on ``window``; returns id -> QAction."""
    menus: dict[str, QMenu] = {m: menubar.addMenu(f"&{m}") for m in MENUS}
    out: dict[str, QAction] = {}
    for entry in ACTIONS:
        menu = menus[entry.menu]
        if isinstance(entry, Separator):
            menu.addSeparator()
        elif isinstance(entry, Submenu):
            sub = menu.addMenu(icon(entry.icon) if entry.icon else icon(""), entry.title)
            sub.setObjectName(f"menu_{entry.id}")
            filler: Callable[[QMenu], None] = getattr(window, entry.filler)
            sub.aboutToShow.connect(lambda f=filler, m=sub: f(m))
            act = sub.menuAction()
            act.setObjectName(f"action_{entry.id}")
            out[entry.id] = act
        else:
            act = QAction(entry.title, window)
            act.setObjectName(f"action_{entry.id}")
            if entry.icon:
                act.setIcon(icon(entry.icon))
            if entry.shortcut is not None:
                act.setShortcut(QKeySequence(entry.shortcut))
            if entry.tip:
                act.setStatusTip(entry.tip)
                act.setToolTip(entry.tip)
            act.setCheckable(entry.checkable)
            callback = getattr(window, entry.callback)
            if entry.checkable:
                act.toggled.connect(callback)
            else:
                act.triggered.connect(lambda _checked=False, cb=callback: cb())
            menu.addAction(act)
            window.addAction(act)  # shortcuts work while the menu bar is hidden too
            out[entry.id] = act
    return out


def update_enablement(actions: Mapping[str, QAction], context: Mapping[str, bool]) -> None:
    """Enable each action whose ``enablement`` key is true in ``context`` (no key: always)."""
    for entry in ACTIONS:
        if isinstance(entry, Separator) or entry.enablement is None:
            continue
        act = actions.get(entry.id)
        if act is not None:
            act.setEnabled(bool(context.get(entry.enablement, False)))
