"""The built-in demo zoo: real models to open with no download.

``trained`` demos are small networks trained on the built-in digits (:mod:`.data`) whose fp32
weights ship in ``resources/demo/<name>.safetensors`` (made by ``python -m
effstudio.core.zoo.train``).  ``reference`` demos are real-size architectures with random
weights (fixed seed): their structure, counts and latency are real, their quality is not.

Open one with ``open_model("demo:cnn")`` (the torch module), ``"demo:cnn.onnx"`` or
``"demo:cnn.pt2"`` (an exported copy, made on first use and cached in the user cache folder).
Importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from effstudio.core.errors import ModelLoadError
from effstudio.core.progress import Progress
from effstudio.core.zoo.data import digits
from effstudio.core.zoo.exports import demo_onnx_path, demo_pt2_path

if TYPE_CHECKING:
    import torch

    from effstudio.core.inputs import InputSpec
    from effstudio.core.model import LoadedModel

__all__ = [
    "DEMOS",
    "DemoInput",
    "DemoSpec",
    "build_demo",
    "demo_onnx_path",
    "demo_pt2_path",
    "digits",
    "example_inputs",
    "load_demo",
]

REFERENCE_SEED = 0
_RANDOM_NOTE = "random weights: structure, counts and latency only; quality unknown."
EXPORT_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}


@dataclass(frozen=True)
class DemoInput:
    """One forward keyword argument: its shape at batch 1 and dtype; ``high`` bounds token ids."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None


@dataclass(frozen=True)
class DemoSpec:
    name: str
    title: str
    description: str
    kind: str  # "trained" | "reference"
    factory: str  # "module:callable" building the untrained module (imported lazily)
    inputs: tuple[DemoInput, ...]
    num_classes: int | None  # None for models without a classifier head (BERT)
    params: int  # exact parameter count (tested)
    macs: int  # multiply-accumulates of one batch-1 forward, as designed (the profiler measures)
    min_test_accuracy: float | None = None  # trained demos: the shipped weights must reach this

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape (batch 1) of the first input."""
        return self.inputs[0].shape

    @property
    def trained(self) -> bool:
        return self.kind == "trained"


_IMAGE = (DemoInput("x", (1, 1, 32, 32)),)
_M = "effstudio.core.zoo.models"
_R = "effstudio.core.zoo.reference"


def _trained(name: str, title: str, what: str, cls: str, params: int, macs: int, acc: float) -> DemoSpec:
    desc = (f"{what} Trained on the built-in 8×8 digits upscaled to 32×32 (input x: 1×1×32×32, "
            f"10 classes); ≈{macs / 1e6:.1f} M MACs per image.")
    return DemoSpec(name, title, desc, "trained", f"{_M}:{cls}", _IMAGE, 10, params, macs, acc)


DEMOS: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        _trained("mlp", "MLP", "Flatten → Linear 1024→768 → ReLU → Linear 768→512 → ReLU → Linear 512→10.",
                 "MLP", 1_186_058, 1_184_768, 0.95),
        _trained("cnn", "CNN", "VGG-style: three stages of two conv-bn-relu (32/64/128 channels), max "
                 "pooling, global average pooling, linear head.", "CNN", 288_170, 38_044_928, 0.95),
        _trained("mobilenetv2", "MobileNetV2 (small)", "Inverted residuals: 1×1 expand, 3×3 depthwise, "
                 "1×1 linear project, ReLU6, residuals where shapes match.", "MobileNetV2Demo",
                 231_434, 19_435_648, 0.95),
        _trained("resnet", "ResNet (small)", "CIFAR-style ResNet: BasicBlocks with skip connections and "
                 "1×1 downsample projections, widths 24/48/96, two blocks per stage.", "ResNetDemo",
                 392_242, 59_204_544, 0.95),
        _trained("transformer", "ViT (small)", "Vision transformer: 4×4 patch embedding (conv), CLS token, "
                 "4 pre-norm nn.TransformerEncoder layers (dim 96, 3 heads), linear head.", "ViTDemo",
                 308_266, 22_513_344, 0.90),
        _trained("lstm", "Row LSTM", "Reads the image row by row (32 steps × 32 pixels) with a 2-layer "
                 "nn.LSTM (hidden 128); the last hidden state → linear classifier.", "RowLSTM",
                 216_330, 6_817_024, 0.90),
        DemoSpec("resnet50", "ResNet-50 (random weights)",
                 "ResNet-50 v1.5 (Bottleneck blocks, 1000 classes), input x: 1×3×224×224, ≈4.1 G MACs; "
                 + _RANDOM_NOTE, "reference", f"{_R}:resnet50", (DemoInput("x", (1, 3, 224, 224)),),
                 1000, 25_557_032, 4_089_184_256),
        DemoSpec("mobilenet_v2", "MobileNetV2 (random weights)",
                 "MobileNetV2 1.0 (1000 classes), input x: 1×3×224×224, ≈0.3 G MACs; " + _RANDOM_NOTE,
                 "reference", f"{_R}:mobilenet_v2", (DemoInput("x", (1, 3, 224, 224)),),
                 1000, 3_504_872, 300_774_272),
        DemoSpec("bert_base", "BERT-base (random weights)",
                 "transformers BertModel from a default BertConfig (12 layers, hidden 768), inputs "
                 "input_ids / attention_mask: 1×128, ≈11 G MACs; needs the optional 'transformers' "
                 "package; " + _RANDOM_NOTE, "reference", f"{_R}:bert_base",
                 (DemoInput("input_ids", (1, 128), "int64", high=30522),
                  DemoInput("attention_mask", (1, 128), "int64", high=2)),
                 None, 109_482_240, 11_174_215_680),
    )
}


def _spec(name: str) -> DemoSpec:
    try:
        return DEMOS[name]
    except KeyError:
        raise ModelLoadError(f"demo:{name}", f"no such demo model; available: {', '.join(DEMOS)}") from None


def _factory(spec: DemoSpec):
    module, attr = spec.factory.split(":")
    return getattr(importlib.import_module(module), attr)


def build_demo(name: str) -> torch.nn.Module:
    """The demo's module in eval mode: shipped trained weights, or random weights from a fixed seed."""
    import torch

    spec = _spec(name)
    factory = _factory(spec)
    if not spec.trained:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            torch.manual_seed(REFERENCE_SEED)
            return factory().eval()
    from safetensors.torch import load_file

    from effstudio.core.paths import demo_dir

    path = demo_dir() / f"{name}.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"demo:{name}", f"shipped weights missing ({path}); "
                                             f"make them with: python -m effstudio.core.zoo.train {name}")
    module = factory()
    try:
        module.load_state_dict(load_file(path), strict=True)
    except (RuntimeError, OSError) as exc:
        problem = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"demo:{name}",
                             f"shipped weights {path.name} do not fit the model: {problem}") from exc
    return module.eval()


def _make_input(spec: DemoSpec, inp: DemoInput, shape: tuple[int, ...], gen) -> torch.Tensor:
    import torch

    if inp.dtype.startswith("int"):
        high = inp.high or 2
        if inp.name == "attention_mask":
            return torch.ones(shape, dtype=torch.int64)
        return torch.randint(0, high, shape, generator=gen, dtype=torch.int64)
    if spec.trained and tuple(shape[1:]) == inp.shape[1:]:
        # real digits from the test split (repeated when the batch is larger than the split)
        x, _ = digits("test", size=shape[-1])
        reps = -(-shape[0] // len(x))
        return torch.from_numpy(x.copy()).repeat(reps, 1, 1, 1)[: shape[0]].contiguous()
    return torch.randn(shape, generator=gen)


def example_inputs(name: str, batch: int = 1, shapes: dict[str, tuple[int, ...]] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Forward keyword name -> example tensor: test-split digits for trained demos, seeded random
    data (token ids in range, an all-ones attention mask) for reference demos.

    ``shapes`` overrides an input's full shape (then ``batch`` does not apply to it).
    """
    import torch

    spec = _spec(name)
    shapes = shapes or {}
    gen = torch.Generator().manual_seed(REFERENCE_SEED)
    out: dict[str, torch.Tensor] = {}
    for inp in spec.inputs:
        shape = tuple(shapes.get(inp.name) or (batch, *inp.shape[1:]))
        out[inp.name] = _make_input(spec, inp, shape, gen)
    return out


def _split_name(name: str) -> tuple[str, str]:
    for suffix, fmt in EXPORT_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], fmt
    return name, "torch"


def _input_shapes(name: str, spec: DemoSpec, inputs: dict[str, InputSpec]) -> dict[str, tuple[int, ...]]:
    known = {i.name for i in spec.inputs}
    shapes: dict[str, tuple[int, ...]] = {}
    for key, ispec in inputs.items():
        if key not in known:
            raise ModelLoadError(f"demo:{name}",
                                 f"no input named {key!r}; its inputs: {', '.join(sorted(known))}")
        if ispec.shape is not None:
            shapes[key] = tuple(ispec.shape)
    return shapes


def load_demo(name: str, *, inputs: dict[str, InputSpec] | None = None,
              progress: Progress | None = None) -> LoadedModel:
    """Open demo ``name`` ("cnn"), or its exported copy ("cnn.onnx", "cnn.pt2").

    ``inputs`` (``--input NAME=DIMS``) changes the example input shapes of the torch form; the
    exported copies have the fixed batch-1 shapes they were exported with.
    """
    progress = progress or Progress()
    base, fmt = _split_name(name)
    if base not in DEMOS:
        raise ModelLoadError(
            f"demo:{name}",
            f"no such demo model; available: {', '.join(DEMOS)} (add .onnx or .pt2 for an exported copy)")
    spec = DEMOS[base]
    inputs = inputs or {}
    if fmt != "torch":
        from effstudio.core.loaders import open_model

        make = demo_onnx_path if fmt == "onnx" else demo_pt2_path
        path = make(base, progress=progress.sub(0.0, 0.6))
        loaded = open_model(str(path), inputs=inputs, progress=progress.sub(0.6, 1.0))
        if loaded.graph.model is not None:
            loaded.graph.model.extra["demo"] = name  # the path is a cache file; say what it is
        return loaded
    shapes = _input_shapes(base, spec, inputs)
    progress.update(0.0, f"building demo {base}")
    module = build_demo(base)
    ex = example_inputs(base, shapes=shapes)
    progress.update(0.2, f"tracing demo {base}")
    from effstudio.core.loaders.torch_graph import loaded_from_module

    return loaded_from_module(module, ex, path=f"demo:{base}", format="demo", progress=progress.sub(0.2, 1.0))


def demo_summary(name: str) -> dict[str, Any]:
    """JSON-ready facts about one demo (for ``effstudio demos`` and the Open dialog)."""
    spec = _spec(name)
    return {
        "name": spec.name, "title": spec.title, "kind": spec.kind, "description": spec.description,
        "inputs": {i.name: {"shape": list(i.shape), "dtype": i.dtype} for i in spec.inputs},
        "num_classes": spec.num_classes, "params": spec.params, "macs": spec.macs,
    }
