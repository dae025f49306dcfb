"""The technique contract: a versioned config dataclass, ``applies_to``, ``apply``.

A technique never mutates the model it is given: ``apply`` returns a :class:`StepResult`
holding a *new* :class:`~effstudio.core.model.LoadedModel` and the names of the layers it
changed (names of the parent graph).  Adding a technique touches one file plus the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from effstudio.core.errors import EffstudioError
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

ExpectKind = Literal["faster", "smaller", "smaller-only", "faster-and-smaller", "neither"]


class CompressError(EffstudioError):
    """A step could not be applied; the previous version stays as it was."""


@dataclass
class TechniqueConfig:
    """Base of every technique's settings (subclass as a dataclass with defaults)."""

    technique: ClassVar[str] = ""  # registry key, e.g. "prune.unstructured"
    version: ClassVar[int] = 1  # bump when a field's meaning changes; from_dict migrates

    def to_dict(self) -> dict[str, Any]:
        return {"technique": self.technique, "version": self.version, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        data = {k: v for k, v in data.items() if k not in ("technique", "version")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CompressError(f"{cls.technique}: unknown setting(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(names))}")
        try:
            cfg = cls(**data)
        except (TypeError, ValueError) as e:
            raise CompressError(f"{cls.technique}: {e}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise CompressError for out-of-range settings (override)."""


@dataclass
class Expectation:
    """What a technique expects on the active backend, checked against the measurement later."""

    kind: ExpectKind
    text: str  # e.g. "smaller file after zip; dense kernels will not run faster"


@dataclass
class StepResult:
    model: LoadedModel  # the new version's model
    changed: list[str]  # layer names (in the parent graph) whose weights/ops changed
    coupled: list[str] = field(default_factory=list)  # changed only because coupled to the selection
    notes: list[str] = field(default_factory=list)  # facts for the user, one sentence each
    expectation: Expectation | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # technique-specific numbers (JSON-able)


class Technique:
    """Subclass, set the class attributes, implement ``applies_to`` and ``apply``; then ``register``."""

    name: ClassVar[str] = ""  # == config_cls.technique
    title: ClassVar[str] = ""  # menu text, e.g. "Unstructured magnitude pruning"
    config_cls: ClassVar[type[TechniqueConfig]] = TechniqueConfig
    backends: ClassVar[frozenset[str]] = frozenset({"onnx", "torch"})

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        """None if the technique can change ``layer``; else the reason it cannot (one phrase)."""
        raise NotImplementedError

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        raise NotImplementedError

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------
    def check_selection(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str]) -> None:
        """Raise CompressError naming every selected layer this technique does not apply to."""
        if loaded.backend not in self.backends:
            raise CompressError(f"{self.name} works on {'/'.join(sorted(self.backends))} models, "
                                f"not {loaded.backend} ones")
        if not selection:
            raise CompressError(f"{self.name}: no layers selected")
        bad = []
        for name in selection:
            if name not in loaded.graph:
                bad.append(f"{name} (no such layer)")
                continue
            why = self.applies_to(loaded.graph.layer(name), loaded, config)
            if why is not None:
                bad.append(f"{name} ({why})")
        if bad:
            shown = "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise CompressError(f"{self.name} does not apply to {len(bad)} selected layer(s): {shown}")
