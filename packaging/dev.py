#!/usr/bin/env python3
"""Set up the project's virtualenv (.venv) and run the app or the tests.

    python3 packaging/dev.py run [MODEL]   # start effstudio (on the demo CNN when no MODEL)
    python3 packaging/dev.py test [ARGS]   # run the whole test suite (pytest ARGS...)

Needs only python3.11 and pip.  The venv is created once and reused; dependencies are
(re)installed when pyproject.toml or the constraints change.  torch is pinned through
packaging/constraints.txt so pip takes the CPU build instead of a multi-GB CUDA one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
CONSTRAINTS = ROOT / "packaging" / "constraints.txt"
STAMP = VENV / ".effstudio-installed"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for f in (ROOT / "pyproject.toml", CONSTRAINTS):
        h.update(f.read_bytes())
    return h.hexdigest()


def ensure_venv() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"effstudio needs Python 3.11 (this is {sys.version.split()[0]})", file=sys.stderr)
        raise SystemExit(2)
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    fp = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fp:
        return
    print("installing effstudio and its dependencies into .venv ...", flush=True)
    subprocess.check_call([str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                           "-c", str(CONSTRAINTS), "torch==2.13.0"])
    subprocess.check_call([str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                           "-c", str(CONSTRAINTS), "-e", f"{ROOT}[dev,hf]"])
    STAMP.write_text(fp)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test", "setup"):
        print(__doc__)
        return 2
    ensure_venv()
    verb, rest = argv[0], argv[1:]
    if verb == "setup":
        return 0
    if verb == "run":
        return subprocess.call([str(PY), "-m", "effstudio", *rest], cwd=ROOT)
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
