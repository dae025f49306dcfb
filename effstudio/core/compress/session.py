"""A compression session: a tree of model versions with undo, redo and branches.

    session = Session(original, store)                 # v0: the original, measured
    v1 = session.apply("prune.unstructured", {"amount": 0.5}, ["features.*"], progress=p)
    session.undo(); session.redo(); session.checkout(0)  # the next apply makes a sibling of v1
    session.recipe()                                   # the steps from v0 to the current version

Each ``apply`` runs the technique on the *current* version's model, re-profiles the result
(static counts at once; latency when ``measure``), compares its outputs with the original's
(fidelity) and scores it on labelled data when there is some (accuracy), stores it (when the
session has a :class:`~effstudio.core.compress.store.Store`) and makes it current.  A step
that fails or is cancelled changes nothing.

Versions reopened from the store load their model lazily from its file.  A torch version's
file holds the exported program, not the eager module torch techniques edit: to continue from
one, the session replays the steps from the nearest version whose eager module it still holds
(at worst the original) and then copies the stored weights over the replayed ones, so the
continued model is exactly the stored one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effstudio.core.compress.base import CompressError, Technique, TechniqueConfig
from effstudio.core.compress.evaluate import EvalData, eval_data_for
from effstudio.core.compress.fidelity import fidelity_inputs, output_names
from effstudio.core.compress.numbers import (
    Reference,
    judge_step,
    measure_latency_numbers,
    measure_numbers,
    merge_latency,
)
from effstudio.core.compress.recipe import Recipe, Step
from effstudio.core.compress.registry import get_technique
from effstudio.core.compress.selection import resolve_selection
from effstudio.core.compress.store import ModelIdentity, Store, VersionRow, require_model_file
from effstudio.core.errors import EffstudioError
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Cancelled, Progress

KEEP_LOADED = 3  # versions besides the original and the current one whose models stay in memory


@dataclass
class Version:
    id: int
    parent_id: int | None
    step: Step | None  # None for the original (v0)
    numbers: dict[str, Any]
    created: float
    status: str = "ok"  # "ok" | "static" (latency not measured yet)
    model_file: str | None = None  # relative to the store folder
    _model: LoadedModel | None = field(default=None, repr=False)
    _live: bool = field(default=False, repr=False)  # made in this process: a torch model is eager
    _session: Session | None = field(default=None, repr=False)
    _used: float = field(default=0.0, repr=False)

    @property
    def is_original(self) -> bool:
        return self.parent_id is None

    @property
    def label(self) -> str:
        return f"v{self.id} " + ("original" if self.step is None else self.step.technique)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        """The version's model, read from its file on first use."""
        self._used = time.monotonic()
        if self._model is None:
            s = self._session
            if s is None or s.store is None or self.model_file is None:
                raise CompressError(f"v{self.id}: its model is not loaded and has no file")
            from effstudio.core.compress.modelfile import load_model

            path = require_model_file(s.store, VersionRow(s.id or "", self.id, self.parent_id, None, {},
                                                          self.model_file))
            try:
                self._model = load_model(path, like=s.original)
            except EffstudioError as e:
                raise CompressError(f"v{self.id}: cannot load its stored model: {e}") from e
            self._live = False
        return self._model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class Session:
    """Versions of one original model.  ``store=None`` keeps everything in memory.

    ``measure``: measure latency after each step (seconds per step; the static numbers are
    always computed).  ``latency``: keyword arguments for ``measure_latency`` (``budget_s``,
    ``per_layer`` ...).  ``data``: labelled data (EvalData, or a ``.npz`` path) for accuracy and
    fidelity; by default the digits test split for the trained demos.  ``spec``: how the
    original was opened (``{"spec", "inputs", "weights", "trust"}``), to reopen it later.
    """

    def __init__(self, original: LoadedModel, store: Store | None = None, *, measure: bool = True,
                 data: EvalData | str | Path | None = None, latency: dict[str, Any] | None = None,
                 spec: dict[str, Any] | None = None, name: str = "", progress: Progress | None = None) -> None:
        progress = progress or Progress()
        self._setup(original, store, measure=measure, latency=latency, spec=spec, data=data)
        progress.update(0.0, "measuring the original")
        numbers = measure_numbers(original, self.reference, is_original=True, measure=measure,
                                  latency=self.latency, progress=progress.sub(0.0, 0.95))
        self.id: str | None = None
        if store is not None:
            self.id = store.create_session(self.identity, self.spec, name, numbers)
        root = Version(0, None, None, numbers, time.time(), "ok" if measure else "static", None,
                       original, True, self)
        self.versions = {0: root}
        self.current_id = 0
        self.name = name
        progress.update(1.0, "session ready")

    def _setup(self, original: LoadedModel, store: Store | None, *, measure: bool, latency: dict[str, Any] | None,
               spec: dict[str, Any] | None, data: EvalData | str | Path | None,
               identify_by_spec: bool = True) -> None:
        self.original = original
        self.store = store
        self.measure = measure
        self.latency = dict(latency or {})
        self.spec = dict(spec or {})
        if isinstance(data, (str, Path)):
            self.spec["npz"] = str(data)
            data = eval_data_for(original, data)
        elif data is None and self.spec.get("npz"):
            data = eval_data_for(original, self.spec["npz"])
        self.identity = ModelIdentity.of(original, self.spec.get("spec") if identify_by_spec else None)
        if not self.spec.get("spec"):  # a demo by name, a file by its absolute path
            self.spec["spec"] = self.identity.path
        try:
            fin = fidelity_inputs(original, data)
        except EffstudioError as e:
            self.reference: Reference | None = None
            self.reference_problem = str(e)
        else:
            self.reference = Reference(original, fin, output_names(original))
            self.reference_problem = ""

    # --- reopening ------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Store, session_id: str, original: LoadedModel | None = None, *, measure: bool = True,
             latency: dict[str, Any] | None = None, progress: Progress | None = None) -> Session:
        """Reopen a stored session; ``original`` is reopened from the stored spec when not given.
        Models of versions load lazily."""
        progress = progress or Progress()
        row = store.session(session_id)
        given = original is not None
        if original is None:
            original = _reopen(row.spec, row.identity.path, progress)
        self = cls.__new__(cls)
        self._setup(original, store, measure=measure, latency=latency, spec=row.spec, data=None,
                    identify_by_spec=not given)
        if self.identity.sha256 != row.identity.sha256 or self.identity.path != row.identity.path:
            raise CompressError(f"session {session_id} was made on {row.identity.path} "
                                f"(sha256 {str(row.identity.sha256)[:12]}); this model differs")
        self.id = session_id
        self.name = row.name
        self.versions = {}
        for r in store.versions(session_id):
            step = Step.from_dict(r.step, f"v{r.id}") if r.step else None
            status = "ok" if r.numbers.get("latency") or not r.numbers else "static"
            v = Version(r.id, r.parent_id, step, r.numbers, r.created, status, r.model_file, _session=self)
            if r.id == 0:
                v._model, v._live = original, True
            self.versions[r.id] = v
        if 0 not in self.versions:
            raise CompressError(f"session {session_id}: the store has no original version")
        self.current_id = row.current if row.current in self.versions else 0
        progress.update(1.0, "session reopened")
        return self

    # --- the tree -------------------------------------------------------------------------
    @property
    def current(self) -> Version:
        return self.versions[self.current_id]

    @property
    def root(self) -> Version:
        return self.versions[0]

    def children(self, version_id: int) -> list[Version]:
        return sorted((v for v in self.versions.values() if v.parent_id == version_id), key=lambda v: v.id)

    def path_to(self, version_id: int | None = None) -> list[Version]:
        """Versions from the original to ``version_id`` (default: the current one)."""
        v = self.versions[self.current_id if version_id is None else version_id]
        out = [v]
        while v.parent_id is not None:
            v = self.versions[v.parent_id]
            out.append(v)
        return out[::-1]

    def _move(self, version_id: int) -> Version:
        self.current_id = version_id
        if self.store is not None and self.id is not None:
            self.store.set_current(self.id, version_id)
        return self.current

    @property
    def can_undo(self) -> bool:
        return self.current.parent_id is not None

    @property
    def can_redo(self) -> bool:
        return bool(self.children(self.current_id))

    def undo(self) -> Version | None:
        """Go to the parent version; None (and no change) at the original."""
        if not self.can_undo:
            return None
        return self._move(self.current.parent_id)  # type: ignore[arg-type]

    def redo(self) -> Version | None:
        """Go to the most recent child of the current version; None when it has none."""
        kids = self.children(self.current_id)
        if not kids:
            return None
        return self._move(max(kids, key=lambda v: (v.created, v.id)).id)

    def checkout(self, version_id: int) -> Version:
        """Make an older version current; the next ``apply`` branches from it."""
        if version_id not in self.versions:
            raise CompressError(f"no version v{version_id} in this session")
        return self._move(version_id)

    def recipe(self, version_id: int | None = None) -> Recipe:
        """The steps from the original to ``version_id`` (default: the current version)."""
        steps = [v.step for v in self.path_to(version_id) if v.step is not None]
        return Recipe(self.identity.to_dict(), [Step(s.technique, s.version, dict(s.config), s.selection,
                                                     s.op_types) for s in steps])

    # --- applying ---------------------------------------------------------------------------
    def resolve(self, loaded: LoadedModel, technique: Technique, config: TechniqueConfig,
                selection: list[str] | None, op_types: list[str] | None = None) -> list[str]:
        """Layer names for a selection; None selects every layer the technique applies to.

        Exact layer names are taken as given (``check_selection`` then names any the technique
        does not apply to).  A pattern (glob, ``re:``, ``scope:``) means "the layers it matches
        that the technique applies to": ``features.*`` on a CNN picks its convs, not its ReLUs.
        """
        if selection is not None:
            names: set[str] = set()
            for pat in selection:
                hit = resolve_selection(loaded.graph, [pat], op_types=op_types)
                if pat not in loaded.graph:
                    applicable = [n for n in hit
                                  if technique.applies_to(loaded.graph.layer(n), loaded, config) is None]
                    if not applicable:
                        why = technique.applies_to(loaded.graph.layer(hit[0]), loaded, config)
                        raise CompressError(f"{technique.name} applies to none of the {len(hit)} layer(s) "
                                            f"that {pat!r} matches (e.g. {hit[0]}: {why})")
                    hit = applicable
                names.update(hit)
            return [n for n in loaded.graph.names() if n in names]
        ops = {o.lower() for o in op_types} if op_types else None
        names = [lay.name for lay in loaded.graph.layers
                 if (ops is None or lay.op_type.lower() in ops)
                 and technique.applies_to(lay, loaded, config) is None]
        if not names:
            raise CompressError(f"{technique.name} applies to no layer of this model")
        return names

    def apply(self, technique: str, config: TechniqueConfig | dict[str, Any] | None = None,
              selection: list[str] | None = None, *, op_types: list[str] | None = None,
              measure: bool | None = None, progress: Progress | None = None) -> Version:
        """Apply a technique to the current version's selected layers; the result becomes current.

        Raises CompressError (the current version stays as it was) for a bad selection or
        settings, and for a step that fails ("step failed: ..."); Cancelled when cancelled."""
        progress = progress or Progress()
        measure = self.measure if measure is None else measure
        tech = get_technique(technique)
        cfg = config if isinstance(config, TechniqueConfig) else tech.config_cls.from_dict(dict(config or {}))
        if cfg.technique != tech.name:
            raise CompressError(f"settings of {cfg.technique} given to {tech.name}")
        parent = self.current
        try:
            working = self._working(parent, progress.sub(0.0, 0.05))
            names = self.resolve(working, tech, cfg, selection, op_types)
            tech.check_selection(working, cfg, names)
            progress.update(0.05, f"applying {tech.name} to {len(names)} layer(s)")
            result = tech.apply(working, cfg, names, progress.sub(0.05, 0.6))
            progress.update(0.6, "re-profiling")
            numbers = measure_numbers(result.model, self.reference, measure=measure, latency=self.latency,
                                      progress=progress.sub(0.6, 0.95))
            expectation = result.expectation
            if expectation is None:
                try:
                    expectation = tech.expectation(working, cfg)
                except NotImplementedError:
                    expectation = None
        except (CompressError, Cancelled):
            raise
        except EffstudioError as e:
            raise CompressError(f"step failed: {e}") from e
        except Exception as e:  # a technique's bug or a backend's refusal: the session stays as it was
            raise CompressError(f"step failed: {type(e).__name__}: {_first_line(e)}") from e
        step = Step.of(cfg, selection, op_types, names)
        numbers.update({
            "changed": list(result.changed), "coupled": list(result.coupled), "notes": list(result.notes),
            "expectation": {"kind": expectation.kind, "text": expectation.text} if expectation else None,
            "extra": dict(result.extra),
        })
        numbers["judgement"] = judge_step(tech.name, expectation, parent.numbers, numbers)
        progress.update(0.95, "saving the version")
        progress.check()
        if self.store is not None and self.id is not None:
            row = self.store.add_version(self.id, parent.id, step.to_dict(with_layers=True), numbers, result.model)
            vid, model_file, created = row.id, row.model_file, row.created
        else:
            vid, model_file, created = max(self.versions) + 1, None, time.time()
        v = Version(vid, parent.id, step, numbers, created, "ok" if measure else "static", model_file,
                    result.model, True, self, time.monotonic())
        self.versions[vid] = v
        self.current_id = vid
        self._trim()
        progress.update(1.0, f"{v.label} ready")
        return v

    def measure_latency(self, version_id: int | None = None, progress: Progress | None = None) -> Version:
        """Measure a version's latency (for versions made with ``measure=False``) and store it."""
        v = self.versions[self.current_id if version_id is None else version_id]
        flops = v.numbers.get("per_layer", {}).get("flops")
        merge_latency(v.numbers, measure_latency_numbers(v.model, flops, self.latency, progress or Progress()))
        if v.parent_id is not None:
            parent = self.versions[v.parent_id]
            exp = v.numbers.get("expectation")
            from effstudio.core.compress.base import Expectation

            v.numbers["judgement"] = judge_step(v.step.technique if v.step else "",
                                                Expectation(exp["kind"], exp["text"]) if exp else None,
                                                parent.numbers, v.numbers)
        v.status = "ok"
        if self.store is not None and self.id is not None:
            self.store.update_numbers(self.id, v.id, v.numbers)
        return v

    # --- models in memory -------------------------------------------------------------------
    def _working(self, v: Version, progress: Progress) -> LoadedModel:
        """The model a technique edits for version ``v`` (for torch: its eager module)."""
        if v.is_original:
            return self.original
        if v._model is not None and v._live:
            return v._model
        stored = v.model
        if stored.backend == "onnx":
            return stored
        chain = []
        a = v
        while not a.is_original and not (a._model is not None and a._live):
            chain.append(a)
            a = self.versions[a.parent_id]  # type: ignore[index]
        cur = self.original if a.is_original else a._model
        for i, b in enumerate(reversed(chain)):
            assert b.step is not None
            progress.update(i / len(chain), f"rebuilding v{b.id} ({b.step.technique})")
            tech = get_technique(b.step.technique)
            res = tech.apply(cur, b.step.make_config(), list(b.step.layers), progress.sub(i / len(chain),
                                                                                         (i + 1) / len(chain)))
            cur = _with_stored_weights(res.model, b.model, b.id)
            b._model, b._live = cur, True
        return cur  # type: ignore[return-value]

    def _trim(self) -> None:
        """Keep the original, the current version and the KEEP_LOADED most recently used models;
        drop the others' models (they reload from the store).  Without a store nothing is dropped."""
        if self.store is None:
            return
        held = [v for v in self.versions.values()
                if v._model is not None and not v.is_original and v.id != self.current_id and v.model_file]
        held.sort(key=lambda v: v._used, reverse=True)
        for v in held[KEEP_LOADED:]:
            v._model, v._live = None, False


def _with_stored_weights(rebuilt: LoadedModel, stored: LoadedModel, vid: int) -> LoadedModel:
    """``rebuilt`` (an eager replay) with the stored version's weights copied in where they differ."""
    import torch

    from effstudio.core.compress.materialize import loaded_from_torch_module

    ep = stored.exported
    saved = dict(ep.state_dict) if ep is not None else stored.torch_module.state_dict()
    live = rebuilt.torch_module.state_dict(keep_vars=True)
    changed = False
    with torch.no_grad():
        for key, t in saved.items():
            mine = live.get(key)
            if mine is None or tuple(mine.shape) != tuple(t.shape) or mine.dtype != t.dtype:
                raise CompressError(f"cannot continue from v{vid}: replaying its steps did not rebuild the "
                                    f"stored model (weight {key!r} differs in name, shape or dtype)")
            if not torch.equal(mine.detach(), t.detach()):
                mine.copy_(t)
                changed = True
    if changed:  # re-export so the graph and exported program hold the stored values
        return loaded_from_torch_module(rebuilt.torch_module, stored)
    return rebuilt


def _reopen(spec: dict[str, Any], path: str, progress: Progress) -> LoadedModel:
    from effstudio.core.inputs import parse_input_specs
    from effstudio.core.loaders import open_model

    where = spec.get("spec") or path
    return open_model(str(where), inputs=parse_input_specs(spec.get("inputs")), weights=spec.get("weights"),
                      trust=bool(spec.get("trust")), progress=progress)
