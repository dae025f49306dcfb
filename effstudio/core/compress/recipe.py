"""Recipes: the steps from an original model to a version, as a versioned YAML file.

    effstudio_recipe: 1
    model: {path: demo:cnn, format: demo, sha256: null}
    steps:
      - technique: prune.unstructured
        version: 1
        config: {amount: 0.5}
        selection: ["features.*"]        # names, globs, re:REGEX, scope:PATH
        op_types: [Conv]                 # optional filter
      - technique: quant.int8
        version: 1
        config: {}
        selection: null                  # null: every layer the technique applies to

``load_recipe`` validates every step (known technique, settings its config accepts, a version
this build understands) and names the step that is wrong.  ``replay`` applies the steps to an
original model and returns the resulting :class:`~effstudio.core.compress.session.Session`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effstudio.core.compress.base import CompressError, TechniqueConfig
from effstudio.core.compress.registry import get_technique
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

if TYPE_CHECKING:
    from effstudio.core.compress.evaluate import EvalData
    from effstudio.core.compress.session import Session
    from effstudio.core.compress.store import Store

RECIPE_FORMAT = 1


@dataclass
class Step:
    """One application of a technique: what it was given and which layers it resolved to."""

    technique: str
    version: int  # of the technique's config
    config: dict[str, Any]  # the settings (without "technique" / "version")
    selection: list[str] | None  # patterns as given; None = every layer the technique applies to
    op_types: list[str] | None = None
    layers: list[str] = field(default_factory=list)  # resolved layer names (when applied)

    @classmethod
    def of(cls, config: TechniqueConfig, selection: list[str] | None, op_types: list[str] | None = None,
           layers: list[str] | None = None) -> Step:
        settings = {k: v for k, v in config.to_dict().items() if k not in ("technique", "version")}
        return cls(config.technique, int(config.version), settings,
                   None if selection is None else list(selection),
                   None if op_types is None else list(op_types), list(layers or []))

    def make_config(self) -> TechniqueConfig:
        tech = get_technique(self.technique)
        current = int(tech.config_cls.version)
        if self.version > current:
            raise CompressError(f"{self.technique}: settings version {self.version} is newer than this "
                                f"effstudio understands ({current})")
        return tech.config_cls.from_dict({"version": self.version, **self.config})

    def to_dict(self, *, with_layers: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"technique": self.technique, "version": self.version, "config": dict(self.config),
                             "selection": None if self.selection is None else list(self.selection)}
        if self.op_types:
            d["op_types"] = list(self.op_types)
        if with_layers:
            d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "step") -> Step:
        if not isinstance(d, dict):
            raise CompressError(f"{where}: expected a mapping with technique, config and selection")
        unknown = sorted(set(d) - {"technique", "version", "config", "selection", "op_types", "layers"})
        if unknown:
            raise CompressError(f"{where}: unknown key(s) {', '.join(unknown)}")
        tech = d.get("technique")
        if not isinstance(tech, str) or not tech:
            raise CompressError(f"{where}: no technique named")
        config = d.get("config") or {}
        if not isinstance(config, dict):
            raise CompressError(f"{where} ({tech}): config must be a mapping of settings")
        version = d.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CompressError(f"{where} ({tech}): version must be a positive integer")
        sel = d.get("selection")
        if isinstance(sel, str):
            sel = [sel]
        if sel is not None and (not isinstance(sel, list) or not all(isinstance(s, str) for s in sel) or not sel):
            raise CompressError(f"{where} ({tech}): selection must be a non-empty list of layer names or "
                                "patterns, or null for every layer the technique applies to")
        ops = d.get("op_types")
        if ops is not None and (not isinstance(ops, list) or not all(isinstance(s, str) for s in ops)):
            raise CompressError(f"{where} ({tech}): op_types must be a list of op type names")
        layers = d.get("layers") or []
        return cls(tech, version, {k: v for k, v in config.items() if k not in ("technique", "version")},
                   sel, ops, list(layers))


@dataclass
class Recipe:
    model: dict[str, Any]  # {"path", "format", "sha256"?}
    steps: list[Step]

    def to_dict(self) -> dict[str, Any]:
        return {"effstudio_recipe": RECIPE_FORMAT, "model": dict(self.model),
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> Recipe:
        """Parse and validate (techniques exist, settings are accepted) — errors name the step."""
        if not isinstance(data, dict) or "effstudio_recipe" not in data:
            raise CompressError(f"{where}: not an effstudio recipe (no 'effstudio_recipe' key)")
        fmt = data["effstudio_recipe"]
        if fmt != RECIPE_FORMAT:
            raise CompressError(f"{where}: recipe format {fmt!r}; this effstudio reads format {RECIPE_FORMAT}")
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise CompressError(f"{where}: 'model' must be a mapping with path and format")
        steps_in = data.get("steps")
        if not isinstance(steps_in, list):
            raise CompressError(f"{where}: 'steps' must be a list")
        steps = []
        for i, raw in enumerate(steps_in, start=1):
            step = Step.from_dict(raw, f"{where}: step {i}")
            try:
                step.make_config()  # unknown technique, unknown settings, out-of-range values
            except CompressError as e:
                raise CompressError(f"{where}: step {i} ({step.technique}): {e}") from None
            steps.append(step)
        return cls(dict(model), steps)


def model_entry(loaded: LoadedModel, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's ``model`` mapping for ``loaded`` (``identity`` from the session when known)."""
    if identity:
        return {k: identity.get(k) for k in ("path", "format", "sha256")}
    return {"path": loaded.path, "format": loaded.format, "sha256": None}


def dump_recipe(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, allow_unicode=True)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the recipe as YAML, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_recipe(recipe))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; any problem is a CompressError naming the file (and step)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompressError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CompressError(f"{path}: cannot read the recipe ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompressError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return Recipe.from_dict(data, str(path))


def replay(recipe: Recipe, original: LoadedModel, progress: Progress | None = None, *,
           store: Store | None = None, measure: bool = False, data: EvalData | None = None,
           latency: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> Session:
    """Apply every step of ``recipe`` to ``original`` in order; the session's current version is
    the result.  A failing step raises CompressError naming its index."""
    from effstudio.core.compress.session import Session

    progress = progress or Progress()
    n = max(1, len(recipe.steps))
    session = Session(original, store, measure=measure, data=data, latency=latency, spec=spec,
                      progress=progress.sub(0.0, 0.5 / n))
    for i, step in enumerate(recipe.steps, start=1):
        sub = progress.sub(0.5 / n + (i - 1) / n * (1 - 0.5 / n), 0.5 / n + i / n * (1 - 0.5 / n))
        try:
            session.apply(step.technique, step.make_config(), step.selection, op_types=step.op_types,
                          progress=sub)
        except CompressError as e:
            raise CompressError(f"recipe step {i} ({step.technique}): {e}") from e
    return session
