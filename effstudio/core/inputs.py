"""Parsing ``--input NAME=DIMS[:DTYPE]`` and making example input data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from effstudio.core.errors import EffstudioError

_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<dims>[0-9]+(?:[x,][0-9]+)*)?(?::(?P<dtype>[a-z0-9]+))?$")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...] | None
    dtype: str | None = None


def parse_input_spec(text: str) -> InputSpec:
    """``"images=1x3x640x640"`` or ``"ids=1x128:int64"`` -> :class:`InputSpec`."""
    m = _SPEC.match(text.strip())
    if not m or (m.group("dims") is None and m.group("dtype") is None):
        raise EffstudioError(
            f"--input {text!r}: expected NAME=DIMS[:DTYPE], e.g. images=1x3x224x224 or ids=1x128:int64")
    dims = m.group("dims")
    shape = tuple(int(d) for d in re.split(r"[x,]", dims)) if dims else None
    return InputSpec(m.group("name"), shape, m.group("dtype"))


def parse_input_specs(texts: list[str] | None) -> dict[str, InputSpec]:
    return {s.name: s for s in (parse_input_spec(t) for t in (texts or []))}
