"""Compression techniques over selected layers, model versions, recipes and fidelity.

Techniques register themselves in :mod:`effstudio.core.compress.registry`; import
``effstudio.core.compress.techniques`` to load them all.
"""
