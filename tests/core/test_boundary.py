"""effstudio.core must never import Qt (PySide6, pyqtgraph) or effstudio.ui.

Every module under effstudio/core is imported in a fresh interpreter, and the modules it
loaded are checked.  (Checked by hand that adding ``import PySide6`` to a core module makes
this fail.)
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import effstudio.core

FORBIDDEN = ("PySide6", "shiboken6", "pyqtgraph", "effstudio.ui")


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(effstudio.core.__path__, "effstudio.core."))


def test_core_modules_found() -> None:
    mods = core_modules()
    assert "effstudio.core.graph" in mods and "effstudio.core.progress" in mods


def test_core_never_imports_qt() -> None:
    code = (
        "import importlib, json, sys\n"
        f"mods = {core_modules()!r}\n"
        "failed = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as e:  # an optional extra that is not installed\n"
        "        failed[m] = str(e)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r} or n.startswith('effstudio.ui'))\n"
        "print(json.dumps({'bad': bad, 'failed': failed}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == [], f"core imported Qt/UI modules: {result['bad']}"
    # only optional extras may be missing; any other import failure is a bug
    broken = {m: e for m, e in result["failed"].items() if "transformers" not in e}
    assert broken == {}
