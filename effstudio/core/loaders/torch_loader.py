"""PyTorch files and factories -> :class:`~effstudio.core.model.LoadedModel`.

- ``.pt2`` (``torch.export.save``): checked for pickled payloads first (``torch.export.load``
  unpickles some parts of an archive without ``weights_only``), then loaded; shapes are
  those the program was exported with.
- TorchScript (``torch.jit.save``): loaded with ``torch.jit.load`` (no Python pickle) and walked
  on example inputs built from ``--input`` (TorchScript stores no shapes).
- ``torch.save`` pickles: refused unless trusted, because unpickling runs code from the file.
  A state dict is recognised (``weights_only=True`` is safe) and pointed at the factory route.
- ``pkg.module:make_model`` factories, optionally with ``--weights`` (safetensors or state dict).
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effstudio.core.errors import InputShapeError, ModelLoadError, UntrustedPickleError
from effstudio.core.inputs import InputSpec
from effstudio.core.loaders.torch_graph import example_array, graph_from_exported, loaded_from_module
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

SAFE_ROUTES = ("save it as an ExportedProgram (.pt2, torch.export.save), as TorchScript (torch.jit.save), "
               "or as a state dict opened with its factory: "
               "effstudio inspect pkg.mod:make_model --weights FILE")
_ID_NAMES = ("ids", "tokens", "token_ids", "input_ids", "indices")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# --- example inputs -------------------------------------------------------------------------
def _vocab_size(module: Any) -> int:
    """num_embeddings of the module's first embedding table (token ids stay in range), else 100."""
    modules = getattr(module, "modules", None)
    if modules is not None:
        for m in modules():
            if isinstance(m, nn.Embedding) or getattr(m, "original_name", "") == "Embedding":
                n = getattr(m, "num_embeddings", None)
                if isinstance(n, int) and n > 0:
                    return n
    return 100


def _default_dtype(name: str) -> torch.dtype:
    low = name.lower()
    return torch.int64 if low in _ID_NAMES or low.endswith("_ids") or low.endswith("_mask") else torch.float32


def random_input(name: str, shape: tuple[int, ...], dtype: torch.dtype, *, vocab: int = 100) -> torch.Tensor:
    """Random data of the right dtype: floats ~N(0,1); masks all ones; token ids in [0, vocab)."""
    gen = torch.Generator().manual_seed(0)
    low = name.lower()
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=gen).to(dtype)
    if "mask" in low:
        return torch.ones(shape, dtype=dtype)
    if "type" in low or "segment" in low:
        return torch.zeros(shape, dtype=dtype)
    return torch.randint(0, max(1, vocab), shape, generator=gen, dtype=dtype)


def _torch_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    if not name:
        return default
    aliases = {"float": "float32", "half": "float16", "double": "float64", "long": "int64", "int": "int32"}
    dt = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dt, torch.dtype):
        raise InputShapeError(f"--input: unknown dtype {name!r} (e.g. float32, int64, bool)")
    return dt


def _flag_example(names: list[str]) -> str:
    return " ".join(f"--input {n}=DIMS" for n in names) + " (e.g. --input x=1x3x224x224 or ids=1x128:int64)"


def inputs_from_specs(where: str, names: list[str], required: list[str], inputs: dict[str, InputSpec],
                      module: Any, what: str) -> dict[str, torch.Tensor]:
    """Example tensors for ``names`` (forward order) from ``--input`` specs.

    ``required`` inputs must be given; optional ones are used when given.  ``what`` says why
    the shapes are needed ("TorchScript stores no input shapes").
    """
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise InputShapeError(f"{where}: --input {unknown[0]!r} is not an input of the model; "
                              f"its inputs are: {', '.join(names) or '(none)'}")
    missing = [n for n in required if n not in inputs or inputs[n].shape is None]
    if missing:
        raise InputShapeError(f"{where}: {what}; give the input shapes with {_flag_example(missing)}")
    vocab = _vocab_size(module)
    out: dict[str, torch.Tensor] = {}
    for n in names:
        spec = inputs.get(n)
        if spec is None or spec.shape is None:
            continue
        out[n] = random_input(n, spec.shape, _torch_dtype(spec.dtype, _default_dtype(n)), vocab=vocab)
    return out


def _forward_names(module: nn.Module) -> tuple[list[str], list[str]]:
    """(all tensor-like argument names, required ones) of ``module.forward``."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return [], []
    names, required = [], []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        names.append(p.name)
        if p.default is p.empty:
            required.append(p.name)
    return names, required


# --- .pt2 -----------------------------------------------------------------------------------
def _check_pt2_safe(path: Path) -> None:
    """Refuse archives whose loading would unpickle more than tensors or load native code.

    ``torch.export.load`` reads weights with ``torch.load(weights_only=False)`` when their
    config says ``use_pickle``, unpickles "opaque" constants with ``pickle.loads``, falls back
    to ``weights_only=False`` for sample inputs, and loads AOTInductor shared libraries.
    """
    def refuse(why: str) -> None:
        raise UntrustedPickleError(str(path), f"this .pt2 {why}; loading it would run code from the file. "
                                   "Pass --trust only if you trust the file")

    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            rel = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            if rel.startswith("data/aotinductor/"):
                refuse("holds AOTInductor compiled code")
            if rel.endswith("_config.json") and (rel.startswith("data/weights/")
                                                  or rel.startswith("data/constants/")):
                try:
                    config = json.loads(z.read(info)).get("config", {})
                except (ValueError, AttributeError):
                    refuse(f"has an unreadable {rel}")
                for meta in config.values():
                    name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or name.startswith(("opaque_obj_", "custom_obj_")):
                        refuse(f"holds pickled objects ({rel}: {name})")
            elif rel.endswith(".pt") or rel.endswith(".pkl"):
                try:
                    torch.load(io.BytesIO(z.read(info)), weights_only=True, map_location="cpu")
                except Exception:
                    refuse(f"holds a pickle that is not plain tensors ({rel})")


def _specialize(where: str, name: str, shape: tuple, spec: InputSpec | None) -> tuple[int, ...] | None:
    """Concrete shape for an exported input: its static shape, with --input filling symbolic dims."""
    if spec is None or spec.shape is None:
        return shape if all(isinstance(d, int) for d in shape) else None
    if len(spec.shape) != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(shape, spec.shape,
                                                                                          strict=True)):
        fixed = "x".join(str(d) for d in shape)
        raise InputShapeError(f"{where}: input {name!r} was exported with shape {fixed}; a .pt2 fixes its "
                              "shapes at export time (re-export with dynamic_shapes to change them)")
    return tuple(spec.shape)


def load_pt2(path: Path, *, inputs: dict[str, InputSpec], trust: bool, progress: Progress) -> LoadedModel:
    where = str(path)
    if not trust:
        progress.update(0.05, "checking the archive")
        _check_pt2_safe(path)
    progress.update(0.1, "loading the ExportedProgram")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises assorted types for damaged or foreign archives
        raise ModelLoadError(where, f"not a loadable torch.export archive ({_first_line(e)})") from e
    progress.update(0.6, "building the layer graph")
    graph = graph_from_exported(ep, path=where, format="torch-export")
    names = [t.name for t in graph.inputs]
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise InputShapeError(f"{where}: --input {unknown[0]!r} is not an input of the model; "
                              f"its inputs are: {', '.join(names)}")
    stored = _stored_example_inputs(ep, names)
    example: dict[str, Any] = {}
    vocab = 100
    for info in graph.inputs:
        shape = _specialize(where, info.name, tuple(info.shape or ()), inputs.get(info.name))
        if shape is None:
            dims = "x".join(map(str, info.shape or ()))
            raise InputShapeError(f"{where}: input {info.name!r} has a dynamic shape {dims}; "
                                  f"give it with {_flag_example([info.name])}")
        t = stored.get(info.name)
        if t is None or tuple(t.shape) != shape:
            t = random_input(info.name, shape, _torch_dtype(info.dtype, torch.float32), vocab=vocab)
        example[info.name] = example_array(t)
    return LoadedModel(graph=graph, format="torch-export", path=where, torch_module=ep.module(), exported=ep,
                       example_inputs=example)


def _stored_example_inputs(ep: torch.export.ExportedProgram, names: list[str]) -> dict[str, torch.Tensor]:
    ex = getattr(ep, "example_inputs", None)
    if not ex:
        return {}
    args, kwargs = ex
    flat = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return dict(zip(names, flat, strict=False)) if len(flat) == len(names) else {}


# --- TorchScript ----------------------------------------------------------------------------
def load_torchscript(path: Path, *, inputs: dict[str, InputSpec], progress: Progress) -> LoadedModel:
    from effstudio.core.loaders.torchscript_graph import graph_from_scripted

    where = str(path)
    progress.update(0.05, "loading TorchScript")
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": we know, the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            ts = torch.jit.load(where, map_location="cpu")
    except Exception as e:
        raise ModelLoadError(where, f"not a loadable TorchScript archive ({_first_line(e)})") from e
    ts.eval()
    try:
        args = ts.forward.schema.arguments[1:]
    except (AttributeError, RuntimeError) as e:
        raise ModelLoadError(where, "TorchScript archive without a forward method") from e
    names = [a.name for a in args]
    required = [a.name for a in args if not a.has_default_value()]
    example = inputs_from_specs(where, names, required, inputs, ts, "TorchScript stores no input shapes")
    progress.update(0.2, "running the TorchScript graph on example inputs")
    try:
        graph = graph_from_scripted(ts, example, path=where, format="torchscript",
                                    progress=progress.sub(0.2, 1))
    except RuntimeError as e:
        raise ModelLoadError(where, "could not run the TorchScript model on the given inputs "
                             f"({_first_line(e)})") from e
    return LoadedModel(graph=graph, format="torchscript", path=where, torch_module=ts,
                       example_inputs={k: example_array(v) for k, v in example.items()})


# --- torch.save pickles -----------------------------------------------------------------------
def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """A flat {name: tensor} dict, also when wrapped in {"state_dict": …} or {"model": …}."""
    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict):
                return _state_dict_of(inner)
    return None


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and containers only, never code."""
    return torch.load(str(path), weights_only=True, map_location="cpu", mmap=zipfile.is_zipfile(path))


def load_pickle(path: Path, *, inputs: dict[str, InputSpec], trust: bool, progress: Progress) -> LoadedModel:
    where = str(path)
    if not trust:
        progress.update(0.05, "checking the pickle")
        try:
            obj = _safe_load(path)
        except Exception as e:  # UnpicklingError: the file holds more than tensors
            raise UntrustedPickleError(
                where, "a pickled model (torch.save(model)): unpickling runs code from the file, so it is "
                f"not opened; {SAFE_ROUTES}; or pass --trust if you trust this file") from e
        sd = _state_dict_of(obj)
        if sd is not None:
            raise ModelLoadError(where, f"a state dict ({len(sd)} tensors, weights only): it needs the code "
                                 "that builds the network: "
                                 f"effstudio inspect pkg.mod:make_model --weights {path.name}")
        raise ModelLoadError(where, f"holds a {type(obj).__name__}, not a model; {SAFE_ROUTES}")
    progress.update(0.05, "unpickling the model (trusted)")
    try:
        obj = torch.load(where, weights_only=False, map_location="cpu")
    except Exception as e:
        raise ModelLoadError(where, f"could not unpickle ({_first_line(e)})") from e
    if not isinstance(obj, nn.Module):
        sd = _state_dict_of(obj)
        if sd is not None:
            raise ModelLoadError(where, f"a state dict ({len(sd)} tensors): open it with its factory: "
                                 f"effstudio inspect pkg.mod:make_model --weights {path.name}")
        raise ModelLoadError(where, f"holds a {type(obj).__name__}, not an nn.Module")
    names, required = _forward_names(obj)
    example = inputs_from_specs(where, names, required, inputs, obj, "a pickled model stores no input shapes")
    return loaded_from_module(obj, example, path=where, format="torch-module", progress=progress.sub(0.2, 1))


def load_torch_file(path: Path, fmt: str, *, inputs: dict[str, InputSpec], trust: bool,
                    progress: Progress) -> LoadedModel:
    """Open a ``.pt2`` / TorchScript / ``torch.save`` file (``fmt`` from :func:`sniff_format`)."""
    path = Path(path)
    if fmt == "pt2":
        return load_pt2(path, inputs=inputs, trust=trust, progress=progress)
    if fmt == "torchscript":
        return load_torchscript(path, inputs=inputs, progress=progress)
    if fmt == "torch-pickle":
        return load_pickle(path, inputs=inputs, trust=trust, progress=progress)
    raise ModelLoadError(str(path), f"unknown PyTorch format {fmt!r}")


# --- factories --------------------------------------------------------------------------------
def load_weights(model: nn.Module, weights: str, *, spec: str) -> None:
    """Load ``.safetensors`` or a ``torch.save`` state dict (``weights_only``) strictly into ``model``."""
    wpath = Path(weights)
    if not wpath.is_file():
        raise ModelLoadError(weights, "no such weights file")
    if wpath.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd: dict[str, torch.Tensor] | None = load_file(str(wpath), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(weights, f"not a readable safetensors file ({_first_line(e)})") from e
    else:
        try:
            obj = _safe_load(wpath)
        except Exception as e:
            raise UntrustedPickleError(weights, "not a plain state dict (it pickles more than tensors, and "
                                       "unpickling would run code from the file); save model.state_dict() "
                                       "or use .safetensors") from e
        sd = _state_dict_of(obj)
        if sd is None:
            raise ModelLoadError(weights, f"holds a {type(obj).__name__}, not a state dict of tensors")
    expected = set(model.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" … ({len(keys)} in all)" if len(keys) > 5 else "")

        parts = ([f"missing keys: {few(missing)}"] if missing else []) + (
            [f"unexpected keys: {few(unexpected)}"] if unexpected else [])
        raise ModelLoadError(weights, f"does not match the model from {spec}: " + "; ".join(parts))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ModelLoadError(weights, f"does not match the model from {spec}: {msg[:300]}") from e


def _factory_example_inputs(model: nn.Module, module: Any) -> dict[str, torch.Tensor] | None:
    """``example_inputs`` (attribute or function) on the model or the factory's module, if any."""
    names, _ = _forward_names(model)
    for owner in (model, module):
        ex = getattr(owner, "example_inputs", None)
        if ex is None:
            continue
        if callable(ex) and not isinstance(ex, torch.Tensor):
            ex = ex()
        if isinstance(ex, torch.Tensor):
            ex = (ex,)
        if isinstance(ex, dict):
            return dict(ex)
        if isinstance(ex, list | tuple):
            return dict(zip(names, ex, strict=False))
    return None


def load_factory(spec: str, *, weights: str | None, inputs: dict[str, InputSpec],
                 progress: Progress) -> LoadedModel:
    """``"pkg.module:make_model"``: import, call with no arguments, load ``weights``, export."""
    mod_name, fn_name = spec.split(":", 1)
    progress.update(0.02, f"importing {mod_name}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # as `python -m` does: modules beside the user resolve
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelLoadError(spec, f"cannot import {mod_name} ({_first_line(e)})") from e
    except Exception as e:  # the module's own code failed while importing
        raise ModelLoadError(spec, f"importing {mod_name} failed ({_first_line(e)})") from e
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ModelLoadError(spec, f"module {mod_name} has no attribute {fn_name}")
    if not callable(fn):
        raise ModelLoadError(spec, f"{fn_name} is a {type(fn).__name__}, not a function that builds a model")
    progress.update(0.05, f"calling {fn_name}()")
    try:
        model = fn()
    except Exception as e:
        raise ModelLoadError(spec, f"{fn_name}() failed; a factory must build the model with no arguments "
                             f"({_first_line(e)})") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(spec, f"{fn_name}() returned a {type(model).__name__}, not a torch nn.Module")
    if weights:
        progress.update(0.1, "loading weights")
        load_weights(model, weights, spec=spec)
    names, required = _forward_names(model)
    if inputs or not (example := _factory_example_inputs(model, module)):
        example = inputs_from_specs(spec, names, required, inputs, model,
                                    "a factory model has no stored input shapes")
    bad = [k for k, v in example.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputShapeError(f"{spec}: example_inputs[{bad[0]!r}] is not a tensor")
    return loaded_from_module(model, example, path=spec, format="torch-module",
                              progress=progress.sub(0.15, 1))
