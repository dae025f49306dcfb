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
# the first of these that the model's forward takes is its main input (text, image, audio features, waveform)
MAIN_INPUTS = ("input_ids", "pixel_values", "input_features", "input_values")
DEFAULT_SAMPLES = 16000  # one second of 16 kHz audio for waveform models (wav2vec2, HuBERT)


def _from_pretrained(transformers, where: str, has_safetensors: bool):
    """The class that ``config.json`` names in ``architectures`` (the model that was saved, its head
    included), when transformers has it; ``AutoModel`` otherwise.  Never remote code."""
    kwargs = dict(local_files_only=True, trust_remote_code=False, use_safetensors=has_safetensors,
                  weights_only=True)
    config = transformers.AutoConfig.from_pretrained(where, local_files_only=True, trust_remote_code=False)
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls.from_pretrained(where, config=config, **kwargs)
    return transformers.AutoModel.from_pretrained(where, config=config, **kwargs)


def _size2(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, list | tuple) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    return None


def _default_shape(main: str, config) -> tuple[int, ...] | None:
    """The main input's shape from the config: 1x128 tokens, a 1xCxHxW image, Whisper's
    1 x mel bins x 2*max_source_positions frames, one second of 16 kHz audio."""
    if main == "input_ids":
        return DEFAULT_SHAPE
    if main == "pixel_values":
        cfg = getattr(config, "vision_config", None) or config
        hw = _size2(getattr(cfg, "image_size", None))
        return None if hw is None else (1, int(getattr(cfg, "num_channels", 3)), *hw)
    if main == "input_features":
        mels, frames = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
        return (1, int(mels), 2 * int(frames)) if mels and frames else None
    return (1, DEFAULT_SAMPLES)


def load_hf(folder: Path, *, inputs: dict[str, InputSpec], progress: Progress) -> LoadedModel:
    """Open a Hugging Face folder (the class ``config.json`` names, else ``AutoModel``) and export it
    with random example inputs; the KV cache is switched off.

    Text models get ``input_ids`` / ``attention_mask`` (/ ``token_type_ids`` when the model takes
    them) of shape 1x128; ``--input input_ids=2x64`` sets the shape of all of them.  Image models
    get ``pixel_values`` and audio models ``input_features`` / ``input_values`` shaped from the
    config; encoder-decoders also get ``decoder_input_ids`` (1x128, or --input).
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
        model = _from_pretrained(transformers, where, has_safetensors)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError … for bad folders
        raise ModelLoadError(where, f"transformers could not load it ({_first_line(e)})") from e
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    for m in model.modules():  # encoder-decoders keep a config copy per stack
        cfg = getattr(m, "config", None)
        if getattr(cfg, "use_cache", None):
            cfg.use_cache = False  # a KV cache in the outputs is not a tensor torch.export can return
    params = inspect.signature(model.forward).parameters
    main = next((n for n in MAIN_INPUTS if n in params), None)
    if main is None:
        raise ModelLoadError(where, f"{type(model).__name__} takes none of {', '.join(MAIN_INPUTS)}; "
                             "open it through a factory (pkg.module:make_model) instead")
    names = [main] + ([n for n in TEXT_INPUTS[1:] if n in params] if main == "input_ids" else [])
    if getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        names.append("decoder_input_ids")
    unknown = [n for n in inputs if n not in params]
    if unknown:
        raise InputShapeError(f"{where}: --input {unknown[0]!r} is not an input of {type(model).__name__}; "
                              f"it takes {', '.join(names)}")
    names += [n for n in inputs if n not in names]
    default = _default_shape(main, model.config)
    if main in inputs and inputs[main].shape:
        default = tuple(inputs[main].shape)
    if default is None:
        raise InputShapeError(f"{where}: the shape of {main!r} is not in config.json; give it with "
                              f"--input {main}=DIMS")
    text_shape = default if main == "input_ids" else (default[0], DEFAULT_SHAPE[1])
    vocab = int(getattr(model.config, "vocab_size", 0) or 100)
    example: dict[str, torch.Tensor] = {}
    for n in names:
        spec = inputs.get(n)
        shape = spec.shape if spec is not None and spec.shape else (default if n == main else text_shape)
        is_ids = n.endswith("_ids") or n.endswith("_mask")
        dtype = _torch_dtype(spec.dtype if spec else None, torch.int64 if is_ids else torch.float32)
        example[n] = random_input(n, tuple(shape), dtype, vocab=vocab)
    progress.update(0.2, "tracing with torch.export")
    loaded = loaded_from_module(model, example, path=where, format="hf", progress=progress.sub(0.2, 1))
    loaded.graph.model.extra["architecture"] = type(model).__name__
    return loaded
