"""The module scope of an ONNX node, as a dotted module path (``encoder.layer.3.attention``).

Exporters record it in different places:
- torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) writes node metadata
  ``pkg.torch.onnx.name_scopes``: a Python list literal of the full module paths from the root
  down, ending with the FX node's own name, e.g. ``['', 'enc', 'enc.0', 'enc.0.conv', 'conv2d']``;
  older versions wrote only ``namespace``: ``': M/enc: Sequential/enc.0: Blk/conv2d: aten.conv2d'``;
- torch's TorchScript exporter and many others encode it in the node name:
  ``/encoder/layer.0/attention/self/query/MatMul`` or ``/enc/enc.0/conv/Conv`` (where a
  Sequential child carries its parent's prefix).
"""

from __future__ import annotations

import ast
import re

import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
NAMESPACE_KEY = "namespace"
# torch.export's placeholder for nodes outside any module (shape arithmetic on inputs)
_NO_MODULE = "_empty_nn_module_stack"


def join_scope(parts: list[str]) -> str:
    """Join module names root-first into one dotted path.

    A part that already extends the path so far (``enc`` then ``enc.0``) replaces it instead of
    being appended, so both full paths and local names give ``enc.0.conv``.
    """
    acc = ""
    for p in parts:
        acc = _extend_scope(acc, p)
    return acc


def _extend_scope(acc: str, p: str) -> str:
    """One step of :func:`join_scope`: the path ``acc`` followed by the module name ``p``."""
    p = p.strip()
    if not p or p.startswith(_NO_MODULE):
        return acc
    if acc and (p == acc or p.startswith(acc + ".")):
        return p
    return f"{acc}.{p}" if acc else p


# the usual form, a list of plain single-quoted strings: split without Python's parser (which
# costs ~0.1 ms a node, a tenth of BERT-base's load); anything else goes to ast.literal_eval.
# The form's definition (``_is_simple_list`` checks it without the regex; a test holds them equal):
_SIMPLE_LIST = re.compile(r"\[(?:'[^'\\]*'(?:, '[^'\\]*')*)?\]")
_ITEM = re.compile(r"'([^'\\]*)'")


def _is_simple_list(value: str) -> bool:
    """``_SIMPLE_LIST.fullmatch(value)``, with string methods (the regex cost ~1.5 µs a node):
    no backslash; ``[]``, or ``['`` ... ``']`` whose middle, split at ``', '``, holds no quote."""
    if value == "[]":
        return True
    return (len(value) >= 4 and value.startswith("['") and value.endswith("']") and "\\" not in value
            and "'" not in value[2:-2].replace("', '", ""))


def _from_name_scopes(value: str, cache: dict[str, str] | None = None) -> str | None:
    if _is_simple_list(value):
        # the last entry is the FX node, not a module: the scope depends on the others only
        modules = value[:max(value.rfind(", '"), 1)]
        return _list_scope(modules, {} if cache is None else cache)
    try:
        scopes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
        return None
    return join_scope(list(scopes[:-1]))  # the last entry is the FX node, not a module


def _list_scope(items: str, cache: dict[str, str]) -> str:
    """``join_scope`` of the items of ``items``, the text of a simple list without its closing
    bracket (``"['', 'enc', 'enc.0'"``).  The paths of a model's nodes share their leading
    items (``['', 'features', 'features.2', ...``): the scope of the list less its last item
    comes from ``cache`` (text -> scope, for one model), and one step of ``join_scope`` adds
    that item."""
    hit = cache.get(items)
    if hit is not None:
        return hit
    cut = items.rfind(", '")  # (an item holds no quote: this is the last separator)
    if cut < 0:
        scope = join_scope(_ITEM.findall(items))  # "[" or "['first'": at most one item
    else:
        scope = _extend_scope(_list_scope(items[:cut], cache), items[cut + 3:-1])  # the item without its quotes
    cache[items] = scope
    return scope


def _from_namespace(value: str) -> str | None:
    # ": M/enc: torch.nn.Sequential/enc.0: Blk/conv2d: aten.conv2d.default"
    entries = [e.split(":", 1)[0].strip() for e in value.split("/")]
    if len(entries) < 2:
        return None
    return join_scope(entries[:-1])


def _from_node_name(name: str) -> str:
    if not name.startswith("/"):
        return ""
    return join_scope(name.split("/")[1:-1])  # the last component is the op ("Conv", "MatMul_1")


def node_scope(node: onnx.NodeProto, cache: dict[str, str] | None = None) -> str:
    """The dotted module path of ``node`` ("" at the top level or when nothing records it).
    ``cache``: a dict kept across the nodes of one model (the scopes many nodes share)."""
    namespace = None
    if node.metadata_props:  # (testing a repeated field costs less than iterating an empty one)
        for prop in node.metadata_props[:]:  # (a slice: see onnx_graph, _WeightInfo)
            key = prop.key
            if key == NAME_SCOPES_KEY:
                scope = _from_name_scopes(prop.value, cache)
                if scope is not None:
                    return scope
            elif key == NAMESPACE_KEY:
                namespace = prop  # its (long) value read only when no name_scopes entry answers
        if namespace is not None:
            scope = _from_namespace(namespace.value)
            if scope is not None:
                return scope
    return _from_node_name(node.name)
