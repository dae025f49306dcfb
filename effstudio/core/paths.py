"""Where effstudio finds its shipped resources and keeps its per-user cache.

- :func:`resources_dir`: ``resources/`` of the source tree, or of a PyInstaller bundle
  (``sys._MEIPASS``); ``EFFSTUDIO_RESOURCES`` overrides both.
- :func:`cache_dir`: the platform's user cache folder (``platformdirs``), e.g.
  ``~/.cache/effstudio`` on Linux; ``EFFSTUDIO_CACHE_DIR`` overrides it (tests point it at a
  temporary folder).  Everything in it can be deleted at any time and is rebuilt on demand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "effstudio"
_RESOURCES_ENV = "EFFSTUDIO_RESOURCES"
_CACHE_ENV = "EFFSTUDIO_CACHE_DIR"


def resources_dir() -> Path:
    """The folder that holds ``demo/``, ``icons/`` and the other shipped resources."""
    override = os.environ.get(_RESOURCES_ENV)
    if override:
        return Path(override)
    bundle = getattr(sys, "_MEIPASS", None)  # a PyInstaller bundle unpacks data files here
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def resource_path(*parts: str) -> Path:
    """``resources_dir() / parts...`` (not checked for existence)."""
    return resources_dir().joinpath(*parts)


def demo_dir() -> Path:
    """Shipped demo weights and their ``metrics.json``."""
    return resource_path("demo")


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The user cache folder (or a sub-folder of it), created on first use."""
    override = os.environ.get(_CACHE_ENV)
    root = Path(override) if override else platformdirs.user_cache_path(APP_NAME, appauthor=False)
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
