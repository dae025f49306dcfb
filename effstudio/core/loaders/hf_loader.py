"""A Hugging Face model folder (``config.json`` + weights) -> :class:`~effstudio.core.model.LoadedModel`.

``transformers`` is imported lazily (optional extra ``effstudio[hf]``).  Weights load only
from the folder (``local_files_only``), never with remote code, and ``pytorch_model.bin``
only through ``torch.load(weights_only=True)``.  The model is then exported like any module.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from effstudio.core.errors import InputShapeError, ModelLoadError
from effstudio.core.inputs import InputSpec
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.loaders.torch_loader import _first_line, _torch_dtype, random_input
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

DEFAULT_SHAPE = (1, 128)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_hf(folder: Path, *, inputs: dict[str, InputSpec], progress: Progress) -> LoadedModel:
    """Open a Hugging Face folder with ``AutoModel`` and export it with token-id example inputs.

    Inputs default to ``input_ids`` / ``attention_mask`` (/ ``token_type_ids`` when the model
    takes them) of shape 1x128; ``--input input_ids=2x64`` sets the shape of all of them.
    """
    folder = Path(folder)
    where = str(folder)
    try:
        import transformers
    except ImportError as e:
        raise ModelLoadError(where, "opening a Hugging Face folder needs transformers: "
                             "pip install effstudio[hf]") from e
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not any(folder.glob("pytorch_model*.bin")):
        raise ModelLoadError(where, "a Hugging Face folder without weights "
                             "(no *.safetensors or pytorch_model.bin)")
    progress.update(0.05, "loading the Hugging Face model")
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr belongs to our own progress reporting
    try:
        model = transformers.AutoModel.from_pretrained(
            where, local_files_only=True, trust_remote_code=False, use_safetensors=has_safetensors,
            weights_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError … for bad folders
        raise ModelLoadError(where, f"transformers could not load it ({_first_line(e)})") from e
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    params = inspect.signature(model.forward).parameters
    names = [n for n in TEXT_INPUTS if n in params]
    if "input_ids" not in names:
        raise ModelLoadError(where, f"{type(model).__name__} does not take input_ids; only text models "
                             "are opened from a folder for now")
    unknown = [n for n in inputs if n not in params]
    if unknown:
        raise InputShapeError(f"{where}: --input {unknown[0]!r} is not an input of {type(model).__name__}; "
                              f"it takes {', '.join(names)}")
    names += [n for n in inputs if n not in names]
    base = inputs["input_ids"].shape if "input_ids" in inputs and inputs["input_ids"].shape else DEFAULT_SHAPE
    vocab = int(getattr(model.config, "vocab_size", 0) or 100)
    example: dict[str, torch.Tensor] = {}
    for n in names:
        spec = inputs.get(n)
        shape = spec.shape if spec is not None and spec.shape else base
        dtype = _torch_dtype(spec.dtype if spec else None, torch.int64)
        example[n] = random_input(n, tuple(shape), dtype, vocab=vocab)
    progress.update(0.2, "tracing with torch.export")
    loaded = loaded_from_module(model, example, path=where, format="hf", progress=progress.sub(0.2, 1))
    loaded.graph.model.extra["architecture"] = type(model).__name__
    return loaded
