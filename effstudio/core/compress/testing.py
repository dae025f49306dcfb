"""Techniques for tests of the compression machinery (sessions, store, recipes, CLI).

Importing this module registers them; the application never imports it, so they are not
offered to users.  They are real, deterministic edits of a model's weights:

- ``testing.scale``: multiply the weight matrices / kernels (2-D and up) of the selected
  layers by ``factor`` (0 zeroes them).  ONNX initializers or torch parameters.
- ``testing.fail``: raises inside ``apply`` (a technique's bug), to test that a failing step
  leaves the session as it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.materialize import loaded_from_onnx_proto, loaded_from_torch_module
from effstudio.core.compress.registry import TECHNIQUES, register
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress


@dataclass
class ScaleConfig(TechniqueConfig):
    technique = "testing.scale"
    version = 1
    factor: float = 0.5

    def validate(self) -> None:
        if not isinstance(self.factor, (int, float)) or isinstance(self.factor, bool):
            raise CompressError(f"testing.scale: factor must be a number, got {self.factor!r}")
        if not -10 <= self.factor <= 10:
            raise CompressError(f"testing.scale: factor must be in [-10, 10], got {self.factor}")


def _matrices(layer: Layer) -> list[str]:
    return [w.name for w in layer.weights if len(w.shape) >= 2 and w.dtype.startswith("float")]


class ScaleWeights(Technique):
    name = "testing.scale"
    title = "Scale weights (test)"
    config_cls = ScaleConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        return None if _matrices(layer) else "has no weight matrix"

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        assert isinstance(config, ScaleConfig)
        if config.factor == 0:
            return Expectation("smaller-only", "zeroed weights compress well; dense kernels run as fast")
        return Expectation("neither", "scaling keeps size and speed")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, ScaleConfig)
        targets = {w for n in selection for w in _matrices(loaded.graph.layer(n))}
        progress.update(0.1, f"scaling {len(targets)} weight tensor(s)")
        if loaded.onnx_model is not None:
            import onnx
            from onnx import numpy_helper

            proto = onnx.ModelProto()
            proto.CopyFrom(loaded.onnx_model)
            for init in proto.graph.initializer:
                if init.name in targets:
                    arr = numpy_helper.to_array(init)
                    scaled = (arr * np.asarray(config.factor, arr.dtype)).astype(arr.dtype)
                    init.CopyFrom(numpy_helper.from_array(scaled, init.name))
            progress.check()
            model = loaded_from_onnx_proto(proto, loaded, progress=progress.sub(0.5, 1.0))
        else:
            import torch

            module = copy.deepcopy(loaded.torch_module)
            state = module.state_dict(keep_vars=True)
            with torch.no_grad():
                for key in targets:
                    state[key].mul_(config.factor)
            progress.check()
            model = loaded_from_torch_module(module, loaded, progress=progress.sub(0.5, 1.0))
        return StepResult(model, list(selection), notes=[f"scaled {len(targets)} weight tensor(s) by {config.factor}"],
                          expectation=self.expectation(loaded, config))


@dataclass
class FailConfig(TechniqueConfig):
    technique = "testing.fail"
    version = 1


class FailingTechnique(Technique):
    name = "testing.fail"
    title = "Always fails (test)"
    config_cls = FailConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        return None

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        return Expectation("neither", "fails")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        raise RuntimeError("deliberate failure inside the technique")


for _cls in (ScaleWeights, FailingTechnique):
    if _cls.name not in TECHNIQUES:
        register(_cls)
