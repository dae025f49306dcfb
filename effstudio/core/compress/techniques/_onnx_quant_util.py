"""Shared plumbing of the quantization techniques: ONNX graph surgery onnxruntime's quantizers
need around them, checking what they really did, and a torch model's ONNX form.

onnxruntime's quantizers are used as they are; what lives here covers their gaps:
- they address nodes by name and quantize initializers only: :func:`prepare_proto` names every
  node as the layer graph does and turns weight-carrying ``Constant`` nodes into initializers;
- the dynamic quantizer rewrites *every* Gemm as MatMul(+Add) before it applies
  ``nodes_to_quantize`` / ``nodes_to_exclude`` (so names of the original Gemms match nothing):
  :func:`gemms_to_matmul` rewrites only the selected Gemms first, and :func:`restore_gemms` puts
  back the unselected ones the quantizer rewrote, so layers outside the selection are untouched;
- nothing reports which nodes were quantized: :func:`weight_storage` traces each compute node's
  weight back through DequantizeLinear / Cast / Transpose to its stored initializer and dtype.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from effstudio.core import dtypes
from effstudio.core.compress.base import CompressError
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

# ONNX ops whose weight input (index 1) is what weight quantization stores differently
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger", "ConvInteger",
                         "MatMulNBits", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
                         "QGemm", "MatMulIntegerToFloat"})
# torch ops (layer graph op_type) that become MatMul/Gemm or Conv in the ONNX form
TORCH_LINEAR_OPS = frozenset({"linear", "matmul", "mm", "bmm", "addmm"})
TORCH_CONV_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution"})
_PASS_THROUGH = frozenset({"DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity"})


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions that onnxruntime's u8×s8 kernels use
    (AVX-VNNI / AVX512-VNNI / AMX); non-x86 CPUs (ARM's sdot) are not affected and count as True.
    Without them (AVX2 only) the kernels use ``vpmaddubsw``, whose int16 sums saturate on
    full-range weights: 7-bit weights (``reduce_range``) avoid it."""
    import platform

    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return False  # unknown x86 (Windows, macOS): assume no VNNI, the safe choice for accuracy
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def resolve_reduce_range(value: bool | None, kind: str = "static") -> tuple[bool, str]:
    """(reduce_range to use, why).  None means: for static (QDQ) quantization, on when the CPU has
    no VNNI; for dynamic quantization, off (measured on MiniLM here: 7-bit weights lowered the
    worst sentence-embedding cosine from 0.984 to 0.979 per-channel, 0.908 to 0.770 per-tensor)."""
    if value is not None:
        return bool(value), "as set"
    if kind == "dynamic":
        return False, ("full 8-bit weights: 7-bit ones measured less accurate with dynamic quantization on "
                       "MiniLM (worst embedding cosine 0.979 vs 0.984)")
    if cpu_has_vnni():
        return False, "this CPU has int8 dot-product instructions (VNNI), full 8-bit weights are safe"
    return True, ("7-bit weights: this CPU has no VNNI, where onnxruntime's u8×s8 kernels saturate on "
                  "full-range int8 weights (measured on the demo CNN's first conv: output cosine 0.81 without, "
                  "0.9998 with)")


def copy_proto(proto):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime's quantizers (they log per node and print to stdout)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            if t:
                out.setdefault(t, []).append(node)
    return out


def prepare_proto(loaded: LoadedModel):
    """A copy of the model's proto that onnxruntime's quantizers can work on: every node named
    (the loader already wrote the layer names back; this only checks) and constant weights of
    compute layers stored as initializers (the quantizers skip ``Constant`` nodes)."""
    from onnx import numpy_helper

    proto = copy_proto(loaded.onnx_model)
    g = proto.graph
    names = [n.name for n in g.node]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise CompressError(f"{loaded.path}: the ONNX graph has unnamed or duplicate node names; "
                            "reopen the model (the loader names every node)")
    inits = {t.name for t in g.initializer}
    uses = consumers(g)
    keep = []
    for node in g.node:
        if (node.op_type == "Constant" and len(node.output) == 1 and node.output[0] not in inits
                and any(c.op_type in COMPUTE_OPS for c in uses.get(node.output[0], []))):
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                t = numpy_helper.from_array(numpy_helper.to_array(value), node.output[0])
                g.initializer.append(t)
                continue
        keep.append(node)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    return proto


# --- Gemm <-> MatMul ------------------------------------------------------------------------
def gemm_rewritable(node) -> bool:
    """The Gemms onnxruntime's quantizers turn into MatMul(+Add): alpha = beta = 1, no transA."""
    return (node.op_type == "Gemm" and float(attr(node, "alpha", 1.0)) == 1.0
            and float(attr(node, "beta", 1.0)) == 1.0 and int(attr(node, "transA", 0)) == 0)


def gemms_to_matmul(proto, names: Iterable[str]) -> dict[str, str]:
    """Rewrite the named Gemms of ``proto`` (in place) as ``MatMul`` (+ ``Add`` of the bias),
    naming them ``<gemm>_MatMul`` / ``<gemm>_Add`` as onnxruntime does; a transposed constant
    weight is stored transposed (``<W>_Transposed``; the original is dropped when nothing else
    reads it).  Returns Gemm name -> MatMul name."""
    from onnx import helper, numpy_helper

    wanted = set(names)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    uses = consumers(g)
    out: dict[str, str] = {}
    new_nodes = []
    for node in g.node:
        if node.name not in wanted or node.op_type != "Gemm":
            new_nodes.append(node)
            continue
        if not gemm_rewritable(node):
            raise CompressError(f"{node.name}: Gemm with alpha/beta other than 1 or transA cannot be "
                                "rewritten as MatMul")
        a, b = node.input[0], node.input[1]
        if int(attr(node, "transB", 0)):
            if b not in inits:
                raise CompressError(f"{node.name}: its transposed weight is not a constant")
            tname = f"{b}_Transposed"
            if tname not in inits:
                t = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[b]).T), tname)
                g.initializer.append(t)
                inits[tname] = t
            if all(c.name in wanted for c in uses.get(b, [])):
                g.initializer.remove(inits.pop(b))
            b = tname
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_MatMul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [a, b], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_Add"))
        out[node.name] = f"{node.name}_MatMul"
    del g.node[:]
    g.node.extend(new_nodes)
    return out


def restore_gemms(result, parent, names: Iterable[str]) -> list[str]:
    """Put the named (unselected) Gemms of ``parent`` back into ``result`` where onnxruntime's
    quantizer rewrote them as float ``<gemm>_MatMul`` (+ ``_Add``, + ``_Transpose``); returns
    the names restored.  Initializers only the rewrite used are removed, the originals re-added."""
    g = result.graph
    by_name = {n.name: n for n in g.node}
    parent_nodes = {n.name: n for n in parent.graph.node}
    parent_inits = {t.name: t for t in parent.graph.initializer}
    restored = []
    drop: set[str] = set()
    replace: dict[str, object] = {}
    for name in names:
        mm = by_name.get(f"{name}_MatMul")
        if name in by_name or mm is None or mm.op_type != "MatMul":
            continue  # not rewritten, or quantized after all (then it is reported, not hidden)
        orig = parent_nodes[name]
        parts = [f"{name}_MatMul", f"{name}_Add", f"{name}_Transpose"]
        drop.update(p for p in parts if p in by_name)
        replace[f"{name}_MatMul"] = orig
        restored.append(name)
    if not restored:
        return []
    new_nodes = []
    for node in g.node:
        if node.name in replace:
            new_nodes.append(replace[node.name])
        elif node.name not in drop:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    have = {t.name for t in g.initializer}
    for name in restored:
        for t in parent_nodes[name].input[1:]:
            if t and t not in have and t in parent_inits:
                g.initializer.append(parent_inits[t])
                have.add(t)
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    return restored


def drop_zero_weight_zero_points(proto) -> int:
    """Remove all-zero weight zero points (input 3) from MatMulInteger nodes; returns how many.

    Symmetric int8 weights have all-zero zero points; given per channel, onnxruntime's kernel
    takes a slower per-column zero-point path (measured on MiniLM, one thread: 1.86× -> 1.98×
    the float32 speed with the input removed; outputs identical, the input is optional)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    dropped = 0
    for node in proto.graph.node:
        if (node.op_type == "MatMulInteger" and len(node.input) == 4 and node.input[3] in inits
                and not numpy_helper.to_array(inits[node.input[3]]).any()):
            del node.input[3]
            dropped += 1
    if dropped:
        used = {t for n in proto.graph.node for t in n.input}
        for t in [t for t in proto.graph.initializer if t.name not in used]:
            proto.graph.initializer.remove(t)
    return dropped


# --- what the result stores ------------------------------------------------------------------
@dataclass(frozen=True)
class Stored:
    """How a compute node's weight is stored in a result model."""

    node: str  # the result node
    op_type: str
    initializer: str | None  # the stored tensor (after tracing through DequantizeLinear etc.)
    dtype: str | None  # its dtype ("int8", "float16", "uint8" for packed MatMulNBits, ...)
    dequantized: bool  # read through a DequantizeLinear (QDQ) or a quantized op


def weight_storage(proto) -> dict[str, Stored]:
    """Result node name -> how its weight (input 1; a Gather's table, input 0) is stored, for every
    compute node and Gather (a Gather from an activation has ``initializer`` None)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, Stored] = {}
    for node in g.node:
        if (node.op_type not in COMPUTE_OPS and node.op_type != "Gather") or len(node.input) < 2:
            continue
        idx = {"QLinearConv": 3, "QLinearMatMul": 3, "Gather": 0}.get(node.op_type, 1)
        t = node.input[idx] if len(node.input) > idx else ""
        deq = node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather")
        for _ in range(8):  # follow a short chain of weight transforms
            if t in inits or t not in producer:
                break
            p = producer[t]
            if p.op_type not in _PASS_THROUGH:
                break
            deq = deq or p.op_type == "DequantizeLinear"
            t = p.input[0]
        init = inits.get(t)
        out[node.name] = Stored(node.name, node.op_type, t if init is not None else None,
                                dtypes.from_onnx(init.data_type) if init is not None else None, deq)
    return out


def owner_of(result_node: str, parent_names: Iterable[str]) -> str | None:
    """The parent layer a result node came from: the same name, or the longest parent name
    that prefixes it followed by ``_`` (``node_linear_1_MatMul_quant`` -> ``node_linear_1``)."""
    best = None
    for p in parent_names:
        if (result_node == p or result_node.startswith(p + "_")) and (best is None or len(p) > len(best)):
            best = p
    return best


def storage_by_layer(proto, parent_names: Iterable[str]) -> dict[str, list[Stored]]:
    """Parent layer name -> the stored weights of the result's compute nodes that came from it."""
    names = list(parent_names)
    out: dict[str, list[Stored]] = {}
    for s in weight_storage(proto).values():
        owner = owner_of(s.node, names)
        if owner is not None:
            out.setdefault(owner, []).append(s)
    return out


def main_weight(layer: Layer):
    """The layer's largest float weight of rank >= 2 (its kernel / matrix), or None."""
    ws = [w for w in layer.weights if w.dtype in ("float32", "float64", "float16", "bfloat16") and len(w.shape) >= 2]
    return max(ws, key=lambda w: w.numel) if ws else None


def activation_from_dq(proto, node_name: str) -> bool:
    """True if the named node's first input is produced by a DequantizeLinear (QDQ activation)."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    node = next((n for n in g.node if n.name == node_name), None)
    if node is None or not node.input:
        return False
    p = producer.get(node.input[0])
    return p is not None and p.op_type == "DequantizeLinear"


# --- a torch model's ONNX form -----------------------------------------------------------------
def torch_to_onnx(loaded: LoadedModel, progress: Progress):
    """Export the torch module with torch.onnx (dynamo, opset 18, the parent's example inputs),
    as the demo zoo does.  Returns the ONNX ModelProto."""
    import torch

    from effstudio.core.zoo.exports import ONNX_OPSET

    example = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in loaded.example_inputs.items()}
    if not example:
        raise CompressError(f"{loaded.path}: no example inputs to export the model to ONNX with")
    progress.update(None, "exporting the torch model to ONNX (torch.onnx, dynamo)")
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with quiet():
            program = torch.onnx.export(loaded.torch_module, (), kwargs=example, dynamo=True,
                                        opset_version=ONNX_OPSET, external_data=False, optimize=True,
                                        verbose=False)
    except Exception as e:  # the exporter raises many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompressError(f"{loaded.path}: torch.onnx.export failed: {type(e).__name__}: {first}") from e
    finally:
        onnx_log.setLevel(level)
    return program.model_proto


def onnx_form(loaded: LoadedModel, progress: Progress) -> LoadedModel:
    """The ONNX form of a torch model as a LoadedModel (same input names, shapes and data)."""
    from effstudio.core.compress.materialize import loaded_from_onnx_proto

    proto = torch_to_onnx(loaded, progress)
    out = loaded_from_onnx_proto(proto, loaded, name="exported", progress=progress)
    if set(out.example_inputs) == set(loaded.example_inputs):
        out.example_inputs = dict(loaded.example_inputs)
    return out


def _fx_name(node) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.fx_node" and p.value.startswith("%"):
            return p.value[1:].split(" ", 1)[0]
    return None


def map_torch_layers(torch_graph, onnx_loaded: LoadedModel, names: list[str],
                     ops: frozenset[str]) -> dict[str, str]:
    """Torch layer name -> the ONNX node (of ``ops``) that computes it in the exported form.

    By weight first (the exporter keeps state-dict names for initializers a Conv/Gemm reads
    directly), then by the exporter's node metadata (module scope + FX node name; a module that
    made one layer is matched by scope alone).  Raises CompressError naming unmatched layers."""
    from effstudio.core.loaders.onnx_scope import node_scope

    proto = onnx_loaded.onnx_model
    nodes = [n for n in proto.graph.node if n.op_type in ops]
    by_weight: dict[str, str] = {}
    for n in nodes:
        for t in n.input[1:2]:
            by_weight.setdefault(t, n.name)
    out: dict[str, str] = {}
    missing = []
    taken: set[str] = set()
    for name in names:
        lay = torch_graph.layer(name)
        w = main_weight(lay)
        hit = by_weight.get(w.name) if w is not None else None
        if hit is None:
            fx = name[len(lay.scope) + 1:] if lay.scope and name.startswith(lay.scope + ".") else None
            cands = [n.name for n in nodes if node_scope(n) == lay.scope and n.name not in taken
                     and (fx is None or _fx_name(n) == fx)]
            hit = cands[0] if len(cands) == 1 else None
        if hit is None:
            missing.append(name)
        else:
            out[name] = hit
            taken.add(hit)
    if missing:
        raise CompressError(f"cannot find {len(missing)} selected layer(s) in the model's ONNX form: "
                            f"{', '.join(missing[:8])}")
    return out
