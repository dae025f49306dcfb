"""The module scope of a node from torch's ``pkg.torch.onnx.name_scopes``: the per-model cache
(the scope of a list's leading items, extended by one item) gives what joining every item gives."""

from __future__ import annotations

import ast
import itertools

from effstudio.core.loaders.onnx_scope import _SIMPLE_LIST, _from_name_scopes, _is_simple_list, join_scope

VALUES = [
    "['', 'features', 'features.0', 'features.0.1', '_native_batch_norm_legit_no_training']",
    "['', 'features', 'features.0', 'features.0.2', 'hardtanh']",
    "['', 'features', 'features.1', 'features.1.conv', 'conv2d_1']",
    "['', 'features', 'features.0', 'features.0.1', 'add']",  # a prefix met before
    "['', 'enc', '0', 'conv', 'conv2d']",  # local names (older exporters): joined with dots
    "['', 'enc', 'enc', 'conv2d_2']",  # a repeated name is not appended twice
    "['', '_empty_nn_module_stack_0', 'sym_size']",  # outside any module
    "[' ', 'a ', ' a.b', 'mul']",  # surrounding spaces are dropped
    "['mul_1']",  # the FX node alone: top level
    "[]",
    "['', 'a.b', 'a', 'x']",  # not a chain: 'a' does not extend 'a.b'
]


def test_cached_scopes_match_joining_every_item() -> None:
    cache: dict[str, str] = {}
    for _ in range(2):  # the second pass answers from the cache
        for value in VALUES:
            want = join_scope(list(ast.literal_eval(value)[:-1]))
            assert _from_name_scopes(value, cache) == want, value
            assert _from_name_scopes(value) == want, value
    assert _from_name_scopes(VALUES[0], {}) == "features.0.1"
    assert _from_name_scopes(VALUES[4], {}) == "enc.0.conv"


def test_simple_list_check_is_the_regex() -> None:
    """``_is_simple_list`` (string methods, for speed) accepts exactly what ``_SIMPLE_LIST``
    matches: every string of up to 6 characters over the characters that matter, and lists of
    awkward items."""
    alphabet = ["[", "]", "'", ",", " ", "\\", "a", "\n"]
    for n in range(7):
        for chars in itertools.product(alphabet, repeat=n):
            value = "".join(chars)
            assert _is_simple_list(value) == bool(_SIMPLE_LIST.fullmatch(value)), repr(value)
    items = ["", "a", "a.b", "'", ", '", "x', 'y", "\\", "[", "]", "', '"]
    for k in range(4):
        for parts in itertools.product(items, repeat=k):
            value = "[" + ", ".join(f"'{p}'" for p in parts) + "]"
            assert _is_simple_list(value) == bool(_SIMPLE_LIST.fullmatch(value)), repr(value)
    assert all(_is_simple_list(v) for v in VALUES)
