"""Qt-free core of effstudio: loading, the layer-graph IR, numbers, compression.

Nothing in this package may import PySide6, pyqtgraph or ``effstudio.ui``
(enforced by ``tests/core/test_boundary.py``).
"""
