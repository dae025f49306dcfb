"""Which model format a file holds, from its bytes (never only its extension).

Nothing is unpickled here: zip archives are told apart by their member names, pickles by
their first bytes.  ONNX is a bare protobuf with no magic number, so anything that is not a
zip or a pickle and not obviously something else (text, an image, an archive…) is handed to
the ONNX loader, which reports an invalid protobuf itself.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from effstudio.core.errors import ModelLoadError

EXPECTED = ("expected .onnx, .pt2 (torch.export), .pt/.ts (TorchScript), a Hugging Face folder, "
            "or pkg.module:factory")

# first bytes of files people open by mistake
_FOREIGN_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
(b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
    (b"\xfd7zXZ\x00", "an xz archive"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"), (b"\x7fELF", "an executable"), (b"MZ", "an executable"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5?)"), (b"\x93NUMPY", "a NumPy array file"),
    (b"GGUF", "a GGUF (llama.cpp) model"),
]


def _first_bytes(path: Path, n: int = 4096) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as e:
        raise ModelLoadError(str(path), f"cannot read the file: {e.strerror or e}") from e


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the end of the sample is fine
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _zip_format(path: Path) -> str:
    """pt2 / torchscript / torch-pickle from a zip's member names (nothing is extracted)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ModelLoadError(str(path), f"a damaged or truncated zip archive ({e})") from e
    # members live under one root folder ("archive/…"); compare what follows it
    rel = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel) \
            or "serialized_exported_program.json" in rel:
        return "pt2"
    if "constants.pkl" in rel or any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "torch-pickle"
    raise ModelLoadError(str(path), f"a zip archive, but not a PyTorch one (no data.pkl); {EXPECTED}")


def sniff_format(path: Path) -> str:
    """``"onnx"``, ``"pt2"``, ``"torchscript"`` or ``"torch-pickle"`` for the file at ``path``.

    Raises :class:`ModelLoadError` for empty files and files that are obviously not models.
    """
    path = Path(path)
    head = _first_bytes(path)
    size = path.stat().st_size
    if not head:
        raise ModelLoadError(str(path), f"the file is empty; {EXPECTED}")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_format(path)
    # pickle protocol 2+ starts with PROTO (0x80) and the protocol number; legacy torch.save too
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-pickle"
    if _is_safetensors(head, size):
        raise ModelLoadError(str(path), "a safetensors file holds weights only, not the network: "
                             "open it with its factory, e.g. effstudio inspect pkg.mod:make_model "
                             f"--weights {path.name}")
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            raise ModelLoadError(str(path), f"not a model file: this is {what}; {EXPECTED}")
    if head[4:8] == b"TFL3":
        raise ModelLoadError(str(path), f"a TensorFlow Lite model, which effstudio does not open; {EXPECTED}")
    if _looks_like_text(head):
        raise ModelLoadError(str(path), f"not a model file: this is text; {EXPECTED}")
    return "onnx"
