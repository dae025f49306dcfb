"""Resolve a selection (layer names, globs like ``features.*``, or ``re:REGEX``) to layer names."""

from __future__ import annotations

import fnmatch
import re

from effstudio.core.compress.base import CompressError
from effstudio.core.graph import LayerGraph


def resolve_selection(graph: LayerGraph, patterns: list[str], *, op_types: list[str] | None = None) -> list[str]:
    """Layer names matched by any pattern, in graph order; optionally only of the given op types.

    A pattern is an exact layer name, a shell glob (``features.*``), ``re:REGEX`` (full match on
    the name), or ``scope:PATH`` (every layer in that module subtree).  A pattern matching
    nothing is an error naming it.
    """
    names = graph.names()
    chosen: set[str] = set()
    for pat in patterns:
        if pat.startswith("re:"):
            rx = re.compile(pat[3:])
            hit = {n for n in names if rx.fullmatch(n)}
        elif pat.startswith("scope:"):
            hit = {lay.name for lay in graph.layers_in_scope(pat[6:])}
        elif pat in graph:
            hit = {pat}
        else:
            hit = set(fnmatch.filter(names, pat))
        if not hit:
            raise CompressError(f"selection {pat!r} matches no layer")
        chosen |= hit
    ops = {o.lower() for o in op_types} if op_types else None
    return [n for n in names if n in chosen and (ops is None or graph.layer(n).op_type.lower() in ops)]
