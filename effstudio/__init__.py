"""effstudio: a desktop model analyzer — see where a model's cost goes, compress it, export it."""

__version__ = "0.1.0"
