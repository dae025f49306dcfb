"""Technique registry: name -> Technique instance."""

from __future__ import annotations

from effstudio.core.compress.base import CompressError, Technique, TechniqueConfig

TECHNIQUES: dict[str, Technique] = {}


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: ``@register`` on a Technique subclass."""
    if not cls.name or cls.name != cls.config_cls.technique:
        raise ValueError(f"{cls.__name__}: name and config_cls.technique must match and be set")
    TECHNIQUES[cls.name] = cls()
    return cls


def get_technique(name: str) -> Technique:
    _load_all()
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise CompressError(f"unknown technique {name!r}; available: {', '.join(sorted(TECHNIQUES))}") from None


def config_from_dict(data: dict) -> TechniqueConfig:
    return get_technique(str(data.get("technique", ""))).config_cls.from_dict(data)


def _load_all() -> None:
    import effstudio.core.compress.techniques  # noqa: F401  (registers every technique)
