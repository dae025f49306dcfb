"""Channel groups of an ONNX graph: the weights that must lose the same channels together.

Torch-Pruning's DepGraph finds these groups on a torch module; nothing does it on an ONNX graph
(onnx2torch cannot be used here), so this module does the same analysis on the ONNX nodes.
Starting at a *root* (a Conv, Gemm or MatMul with a weight initializer, whose output channels
are to be removed) it follows the channel axis through the graph:

- forward through ops that keep channels apart: BatchNormalization / InstanceNormalization
  (their per-channel parameters follow), activations, pooling, Pad, Resize, Transpose /
  Squeeze / Unsqueeze (the axis moves), Reduce* over other axes, Flatten / Reshape that only
  merge the dimensions after the channel axis (each channel then spans a block of positions);
- into the consumers' input channels: Conv weight dim 1, Gemm / MatMul weight rows (after a
  Flatten, ``channels × spatial`` rows);
- across elementwise Add / Sub / Mul / Div / Max / Min / Sum / Where: every operand with the
  full channel axis loses the same channels, so a residual add ties the convs that feed it
  (and everything they feed) into one group; constant operands with a channel axis follow;
- Concat along the channel axis (each input is one slice of the output), and depthwise convs
  (``group == channels``: their filters go in lockstep with their input channels).

A group that cannot be resolved (an op that mixes channels, an unknown op, a channel axis
that reaches a graph input or output) is *blocked*: ``ChannelGroup.blocked`` names the node
and op.  Positions are always indices of the *original* tensors, so several groups can be
pruned in one pass (:func:`prune_groups`).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops that act on each element alone: channels pass through unchanged
UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Sin", "Cos", "Mish", "ThresholdedRelu", "Clip", "Identity", "Dropout", "Cast", "Not", "IsNaN",
    "IsInf", "Swish", "QuickGelu",
})
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
                             "Equal", "Less", "Greater", "And", "Or"})
# ops over the spatial axes of an NCHW tensor (channel axis 1)
SPATIAL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                         "GlobalLpPool", "Resize", "Upsample", "Pad"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
                        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
NORMALIZE_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
ROOT_OPS = frozenset({"Conv", "Gemm", "MatMul"})


class Blocked(Exception):
    """The channel axis cannot be followed through a node (the message says why)."""


@dataclass
class Slice:
    """Positions of every group channel along one axis of one weight tensor.

    ``pos[c]`` are the positions of group channel ``c`` (several after a Flatten); ``-1`` marks a
    channel that does not reach this tensor (a Concat input holds only part of the channels).
    ``role``: ``out`` (a root's output filters), ``in`` (a consumer's input channels) or ``param``
    (per-channel parameters: BatchNormalization, biases, constant operands)."""

    tensor: str
    node: str
    axis: int
    pos: np.ndarray
    role: str
    bn_scale: bool = False  # the scale of a normalization layer (for bn_scale importance)


@dataclass
class ChannelGroup:
    channels: int
    roots: list[str] = field(default_factory=list)  # nodes whose output channels these are
    slices: list[Slice] = field(default_factory=list)
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # activation -> (axis, pos)
    reshapes: list[tuple[str, str, int]] = field(default_factory=list)  # (node, output tensor, shape dim)
    depthwise: list[str] = field(default_factory=list)  # depthwise Conv nodes (their group attr follows)
    blocked: str | None = None

    @property
    def layers(self) -> list[str]:
        """Every node whose weights or attributes change when this group is pruned."""
        out = dict.fromkeys(self.roots)
        out.update(dict.fromkeys(s.node for s in self.slices))
        out.update(dict.fromkeys(self.depthwise))
        out.update(dict.fromkeys(n for n, _t, _d in self.reshapes))
        return list(out)

    def removed_positions(self, channels) -> dict[tuple[str, int], set[int]]:
        """(weight, axis) -> the positions that go when ``channels`` (group indices) are removed."""
        out: dict[tuple[str, int], set[int]] = defaultdict(set)
        idx = np.asarray(sorted(channels), dtype=np.int64)
        for s in self.slices:
            p = s.pos[idx].reshape(-1)
            out[(s.tensor, s.axis)].update(int(v) for v in p[p >= 0])
        return out


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shift(pos: np.ndarray, offset: int) -> np.ndarray:
    return np.where(pos >= 0, pos + offset, -1)


def _expand(pos: np.ndarray, factor: int) -> np.ndarray:
    """Each position p becomes the block ``p*factor .. p*factor+factor-1`` (a Flatten)."""
    if factor == 1:
        return pos
    out = (pos[:, :, None] * factor + np.arange(factor)[None, None, :]).reshape(pos.shape[0], -1)
    return np.where(np.repeat(pos, factor, axis=1) >= 0, out, -1)


def _compress(pos: np.ndarray, factor: int, where: str) -> np.ndarray:
    """Inverse of :func:`_expand`; Blocked when the positions are not whole aligned blocks."""
    if factor == 1:
        return pos
    if pos.shape[1] % factor:
        raise Blocked(f"{where} splits a channel")
    blocks = pos.reshape(pos.shape[0], -1, factor)
    base = blocks[:, :, 0]
    ok = (blocks == np.where(base[:, :, None] >= 0, base[:, :, None] + np.arange(factor), -1)).all()
    if not ok or (base[base >= 0] % factor).any():
        raise Blocked(f"{where} splits a channel")
    return np.where(base >= 0, base // factor, -1)


class OnnxChannelGraph:
    """Lookups over one ONNX model (shapes inferred once) and the channel groups of its roots."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.nodes = {n.name: n for n in g.node}
        if len(self.nodes) != len(g.node) or "" in self.nodes:
            raise ValueError("every node needs a unique name (the loader gives them one)")
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.const_node: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            if n.op_type == "Constant" and n.output:
                val = _attr(n, "value")
                if val is not None:
                    self.consts[n.output[0]] = numpy_helper.to_array(val)
                    self.const_node[n.output[0]] = n
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in g.node:
            if n.op_type == "Constant":
                continue
            for o in n.output:
                self.producer[o] = n
            for i, t in enumerate(n.input):
                if t:
                    self.consumers[t].append((n, i))
        self.graph_outputs = {o.name for o in g.output}
        self.graph_inputs = {i.name for i in g.input} - set(self.consts)
        self.subgraph_reads = set()
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    self._collect_reads(sub)
        self.shapes = self._infer_shapes()
        self._groups: dict[str, ChannelGroup] = {}

    def _collect_reads(self, sub) -> None:
        for n in sub.node:
            self.subgraph_reads.update(t for t in n.input if t)
            for a in n.attribute:
                for s in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    self._collect_reads(s)

    def _infer_shapes(self) -> dict[str, tuple]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception:  # shape inference raises many kinds; fall back to the shapes the file states
            inferred = self.model
        shapes: dict[str, tuple] = {}
        g = inferred.graph
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for name, arr in self.consts.items():
            shapes[name] = tuple(arr.shape)
        return shapes

    # --- small lookups -----------------------------------------------------------------------
    def shape(self, tensor: str, where: str) -> tuple[int, ...]:
        s = self.shapes.get(tensor)
        if s is None or any(d is None for d in s):
            raise Blocked(f"{where}: the shape of {tensor!r} is not known")
        return s

    def rank(self, tensor: str, where: str) -> int:
        s = self.shapes.get(tensor)
        if s is None:
            raise Blocked(f"{where}: the rank of {tensor!r} is not known")
        return len(s)

    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def const_users(self, tensor: str) -> int:
        return len(self.consumers.get(tensor, []))

    def axes_of(self, node, where: str, rank: int, index: int = 1) -> list[int] | None:
        """The ``axes`` attribute, or the constant input ``index`` (opset 13+), normalized."""
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > index and node.input[index]:
            if node.input[index] not in self.consts:
                raise Blocked(f"{where} takes computed axes")
            axes = self.consts[node.input[index]].reshape(-1).tolist()
        return None if axes is None else [int(a) % rank for a in axes]

    # --- roots -------------------------------------------------------------------------------
    def root_problem(self, name: str) -> str | None:
        """None if ``name`` is a node whose output channels can be chosen; else why not."""
        n = self.nodes.get(name)
        if n is None:
            return "no such node"
        if n.op_type not in ROOT_OPS:
            return f"a {n.op_type} has no output channels of its own to prune"
        w = n.input[1] if len(n.input) > 1 else ""
        if w not in self.consts:
            return f"its weight is computed, not stored ({n.op_type} input {w!r})"
        if n.op_type == "Conv":
            group = int(_attr(n, "group", 1))
            if group != 1:
                return ("a depthwise conv: its channels follow its input (prune the conv before it)"
                        if self.consts[w].shape[1] == 1 else f"a grouped conv (group={group})")
        elif self.consts[w].ndim != 2:
            return f"its weight {w!r} is not a matrix"
        elif n.op_type == "Gemm" and int(_attr(n, "transA", 0)):
            return "a Gemm with transA"
        return None

    def group(self, root: str) -> ChannelGroup:
        """The channel group of ``root``'s output channels (computed once per group)."""
        if root in self._groups:
            return self._groups[root]
        why = self.root_problem(root)
        if why is not None:
            raise Blocked(f"{root}: {why}")
        grp = _GroupBuilder(self, root).build()
        for r in grp.roots:
            self._groups.setdefault(r, grp)
        self._groups[root] = grp
        return grp


class _GroupBuilder:
    def __init__(self, cg: OnnxChannelGraph, root: str) -> None:
        self.cg = cg
        self.root = root
        self.queue: deque = deque()
        self.grp: ChannelGroup | None = None
        self.seen_slices: set[tuple[str, str, int]] = set()

    def build(self) -> ChannelGroup:
        cg = self.cg
        n = cg.nodes[self.root]
        w = cg.consts[n.input[1]]
        if n.op_type == "Conv":
            channels = w.shape[0]
        elif n.op_type == "Gemm":
            channels = w.shape[0] if int(_attr(n, "transB", 0)) else w.shape[1]
        else:
            channels = w.shape[1]
        self.grp = ChannelGroup(channels)
        pos = np.arange(channels, dtype=np.int64)[:, None]
        try:
            out = n.output[0]
            axis = 1 if n.op_type != "MatMul" else cg.rank(out, self._where(n)) - 1
            self._root_out(n, pos)
            self.queue.append((out, axis, pos, n.name))
            while self.queue:
                self._visit(*self.queue.popleft())
        except Blocked as e:
            self.grp.blocked = str(e)
        return self.grp

    @staticmethod
    def _where(n) -> str:
        return f"{n.name} ({n.op_type})"

    # --- recording ------------------------------------------------------------------------
    def _slice(self, tensor: str, node, axis: int, pos: np.ndarray, role: str, bn_scale: bool = False) -> None:
        cg = self.cg
        if tensor not in cg.consts:
            raise Blocked(f"{self._where(node)}: its {role} weight {tensor!r} is computed, not stored")
        key = (tensor, node.name, axis)
        if key in self.seen_slices:
            return
        self.seen_slices.add(key)
        users = {c.name for c, _i in cg.consumers.get(tensor, [])}
        if len(users) > 1:
            raise Blocked(f"{self._where(node)}: weight {tensor!r} is shared with {sorted(users - {node.name})[0]}")
        self.grp.slices.append(Slice(tensor, node.name, axis, pos, role, bn_scale))

    def _root_out(self, n, pos) -> None:
        w = n.input[1]
        warr = self.cg.consts[w]
        if n.op_type == "Conv":
            axis = 0
        elif n.op_type == "Gemm":
            axis = 0 if int(_attr(n, "transB", 0)) else 1
        else:
            axis = 1
        self._slice(w, n, axis, pos, "out")
        if len(n.input) > 2 and n.input[2]:
            b = n.input[2]
            arr = self.cg.consts.get(b)
            if arr is None:
                raise Blocked(f"{self._where(n)}: its bias is computed")
            if arr.ndim >= 1 and arr.shape[-1] == warr.shape[axis]:
                self._slice(b, n, arr.ndim - 1, pos, "param")
            elif arr.size != 1:
                raise Blocked(f"{self._where(n)}: bias shape {arr.shape} does not follow the channels")
        if n.name not in self.grp.roots:
            self.grp.roots.append(n.name)

    # --- traversal ------------------------------------------------------------------------
    def _visit(self, t: str, axis: int, pos: np.ndarray, via: str) -> None:
        cg = self.cg
        grp = self.grp
        if t in grp.tensors:
            a0, p0 = grp.tensors[t]
            if a0 != axis or p0.shape != pos.shape or not (p0 == pos).all():
                raise Blocked(f"tensor {t!r} is reached with two different channel layouts")
            return
        grp.tensors[t] = (axis, pos)
        if t in cg.graph_outputs:
            raise Blocked(f"its channels reach the model output {t!r}")
        if t in cg.graph_inputs:
            raise Blocked(f"its channels come from the model input {t!r}")
        if t in cg.subgraph_reads:
            raise Blocked(f"tensor {t!r} is read inside a control-flow subgraph")
        prod = cg.producer.get(t)
        if prod is not None and prod.name != via:
            self._backward(prod, t, axis, pos)
        for node, idx in cg.consumers.get(t, []):
            if node.name != via:
                self._forward(node, idx, t, axis, pos)

    def _push(self, t: str, axis: int, pos: np.ndarray, via) -> None:
        self.queue.append((t, axis, pos, via.name))

    # --- consumers ------------------------------------------------------------------------
    def _forward(self, n, idx: int, t: str, axis: int, pos: np.ndarray) -> None:
        cg = self.cg
        op = n.op_type
        where = self._where(n)
        if op == "Conv":
            if idx != 0:
                raise Blocked(f"{where} uses the channels as its weight")
            if axis != 1 or pos.shape[1] != 1:
                raise Blocked(f"{where}: the channels are not its input channels")
            w = n.input[1]
            if w not in cg.consts:
                raise Blocked(f"{where}: its weight is computed")
            warr = cg.consts[w]
            group = int(_attr(n, "group", 1))
            cin = cg.shape(t, where)[1]
            if group == 1:
                self._slice(w, n, 1, pos, "in")
                return
            if group == cin and warr.shape[1] == 1:  # depthwise: filters follow their input channel
                mult = warr.shape[0] // group
                out_pos = _expand(pos, mult)
                self._slice(w, n, 0, out_pos, "out")
                if len(n.input) > 2 and n.input[2]:
                    self._slice(n.input[2], n, 0, out_pos, "param")
                if n.name not in self.grp.depthwise:
                    self.grp.depthwise.append(n.name)
                self._push(n.output[0], 1, out_pos, n)
                return
            raise Blocked(f"{where}: grouped conv (group={group}) mixes channel blocks")
        if op == "Gemm":
            if idx != 0 or int(_attr(n, "transA", 0)):
                raise Blocked(f"{where} does not read the channels as its input features")
            if axis != 1 or cg.rank(t, where) != 2:
                raise Blocked(f"{where}: the channels are not its input features")
            if n.input[1] not in cg.consts:
                raise Blocked(f"{where}: its weight is computed")
            self._slice(n.input[1], n, 1 if int(_attr(n, "transB", 0)) else 0, pos, "in")
            return
        if op == "MatMul":
            if idx != 0 or n.input[1] not in cg.consts or cg.consts[n.input[1]].ndim != 2:
                raise Blocked(f"{where}: only x @ stored-matrix consumers can follow the channels")
            if axis != cg.rank(t, where) - 1:
                raise Blocked(f"{where}: the channels are not the contracted axis")
            self._slice(n.input[1], n, 0, pos, "in")
            return
        if op in ELEMENTWISE_OPS:
            self._elementwise(n, t, axis, pos)
            return
        if op == "Concat":
            caxis = int(_attr(n, "axis")) % cg.rank(t, where)
            if caxis != axis:
                self._push(n.output[0], axis, pos, n)  # concatenated along another axis: channels line up
                for other in n.input:
                    if other != t and other not in cg.consts:
                        self._push(other, axis, pos, n)
                return
            if list(n.input).count(t) > 1:
                raise Blocked(f"{where} concatenates {t!r} with itself")
            offset = 0
            for inp in n.input:
                if inp == t:
                    break
                offset += self.cg.shape(inp, where)[caxis]
            self._push(n.output[0], axis, _shift(pos, offset), n)
            return
        out_axis, out_pos = self._through(n, axis, pos, forward=True)
        self._push(n.output[0], out_axis, out_pos, n)

    def _through(self, n, axis: int, pos: np.ndarray, *, forward: bool) -> tuple[int, np.ndarray]:
        """How a single-input op moves the channel axis (forward: input -> output, else back);
        records its per-channel parameters."""
        cg = self.cg
        op = n.op_type
        where = self._where(n)
        x, y = n.input[0], n.output[0]
        if op in UNARY_OPS:
            if op == "Clip":
                for b in n.input[1:]:
                    if b and (b not in cg.consts or cg.consts[b].size != 1):
                        raise Blocked(f"{where}: its bounds are not scalars")
            return axis, pos
        if op in ("BatchNormalization", "InstanceNormalization"):
            if axis != 1:
                raise Blocked(f"{where}: the channels are not axis 1")
            if pos.shape[1] != 1:
                raise Blocked(f"{where}: flattened channels")
            for i, p in enumerate(n.input[1:], start=1):
                if p:
                    self._slice(p, n, 0, pos, "param", bn_scale=(i == 1))
            if op == "BatchNormalization" and len([o for o in n.output if o]) > 1:
                raise Blocked(f"{where} in training mode")
            return axis, pos
        if op in SPATIAL_OPS:
            if axis != 1:
                raise Blocked(f"{where}: the channels are not axis 1")
            if op == "Pad":
                pads = n.input[1] if len(n.input) > 1 else ""
                if pads and pads not in cg.consts:
                    raise Blocked(f"{where}: computed pads")
                if pads:
                    p = cg.consts[pads].reshape(-1)
                    r = len(p) // 2
                    axes = cg.axes_of(n, where, r, index=3) or list(range(r))
                    for k, a in enumerate(axes):
                        if a == axis and (p[k] or p[k + len(axes)]):
                            raise Blocked(f"{where} pads the channel axis")
            if op in ("Resize", "Upsample"):
                xs = cg.shape(x, where)
                ys = cg.shape(y, where)
                if xs[1] != ys[1]:
                    raise Blocked(f"{where} resizes the channel axis")
            return axis, pos
        if op in REDUCE_OPS:
            rank = cg.rank(x, where)
            axes = cg.axes_of(n, where, rank)
            if axes is None:
                if int(_attr(n, "noop_with_empty_axes", 0)):
                    return axis, pos
                axes = list(range(rank))
            if axis in axes:
                raise Blocked(f"{where} reduces over the channels")
            if int(_attr(n, "keepdims", 1)):
                return axis, pos
            shift = sum(1 for a in axes if a < axis)
            return (axis - shift, pos) if forward else (axis + shift, pos)
        if op in NORMALIZE_OPS:
            rank = cg.rank(x, where)
            if int(_attr(n, "axis", -1)) % rank == axis:
                raise Blocked(f"{where} normalizes over the channels")
            return axis, pos
        if op == "LayerNormalization":
            rank = cg.rank(x, where)
            if axis >= int(_attr(n, "axis", -1)) % rank:
                raise Blocked(f"{where} normalizes over the channels")
            return axis, pos
        if op == "Transpose":
            rank = cg.rank(x, where)
            perm = list(_attr(n, "perm", list(range(rank))[::-1]))
            return (perm.index(axis), pos) if forward else (perm[axis], pos)
        if op in ("Squeeze", "Unsqueeze"):
            in_rank, out_rank = cg.rank(x, where), cg.rank(y, where)
            if op == "Squeeze":
                axes = cg.axes_of(n, where, in_rank)
                if axes is None:
                    axes = [i for i, d in enumerate(cg.shape(x, where)) if d == 1]
                small = [i for i in range(in_rank) if i not in axes]  # input axes that survive
                if forward:
                    if axis in axes:
                        raise Blocked(f"{where} squeezes the channels")
                    return small.index(axis), pos
                return small[axis], pos
            axes = cg.axes_of(n, where, out_rank) or []
            kept = [i for i in range(out_rank) if i not in axes]  # output axes that come from the input
            return (kept[axis], pos) if forward else (kept.index(axis), pos)
        if op in ("Flatten", "Reshape"):
            return self._reshape(n, axis, pos, forward)
        raise Blocked(f"{where}: not known how it maps channels")

    def _reshape(self, n, axis: int, pos: np.ndarray, forward: bool) -> tuple[int, np.ndarray]:
        cg = self.cg
        where = self._where(n)
        xs, ys = cg.shape(n.input[0], where), cg.shape(n.output[0], where)
        a = axis  # the channel axis has the same index on both sides (the prefix is equal)
        # only merges/splits of the dimensions *after* the channel axis keep channels apart: the
        # prefix up to the channel axis must be equal on both sides
        if a >= len(xs) or a >= len(ys) or tuple(xs[:a]) != tuple(ys[:a]):
            raise Blocked(f"{where} mixes the channels with other dimensions")
        s_in = int(np.prod(xs[a + 1:], dtype=np.int64))
        s_out = int(np.prod(ys[a + 1:], dtype=np.int64))
        if xs[a] * s_in != ys[a] * s_out or s_in % max(s_out, 1):
            raise Blocked(f"{where} mixes the channels with other dimensions")
        factor = s_in // s_out
        if n.op_type == "Reshape":
            shape = n.input[1]
            if shape not in cg.consts:
                raise Blocked(f"{where}: its target shape is computed")
            target = cg.consts[shape].reshape(-1)
            if a >= len(target):
                raise Blocked(f"{where}: unexpected target shape")
            if target[a] == 0 and factor != 1:
                raise Blocked(f"{where}: target shape copies a dimension that changes")
            if target[a] > 0:
                self.grp.reshapes.append((n.name, n.output[0], a))
        return (a, _expand(pos, factor)) if forward else (a, _compress(pos, factor, where))

    def _elementwise(self, n, t: str | None, axis_out_or_in: int, pos: np.ndarray, *, from_output=False) -> None:
        """Couple every operand of an elementwise node (``t`` is the operand we came from, or None
        when we came from its output; ``axis_out_or_in`` is then the output's axis)."""
        cg = self.cg
        where = self._where(n)
        out = n.output[0]
        out_rank = cg.rank(out, where)
        if from_output:
            out_axis = axis_out_or_in
        else:
            out_axis = axis_out_or_in + out_rank - cg.rank(t, where)
        channels = cg.shape(out, where)[out_axis]
        for inp in n.input:
            if not inp or inp == t:
                continue
            r = cg.rank(inp, where)
            a = out_axis - (out_rank - r)
            if a < 0:
                continue  # broadcast along the channels
            d = cg.shape(inp, where)[a]
            if d == 1:
                continue
            if d != channels:
                raise Blocked(f"{where}: operand {inp!r} has {d} channels, not {channels}")
            if inp in cg.consts:
                self._slice(inp, n, a, pos, "param")
            else:
                self._push(inp, a, pos, n)
        if not from_output:
            self._push(out, out_axis, pos, n)

    # --- producers ------------------------------------------------------------------------
    def _backward(self, n, t: str, axis: int, pos: np.ndarray) -> None:
        cg = self.cg
        op = n.op_type
        where = self._where(n)
        if n.output[0] != t:
            raise Blocked(f"{where}: the channels come from its secondary output")
        if op in ROOT_OPS:
            if cg.root_problem(n.name) is None:
                want = 1 if op != "MatMul" else cg.rank(t, where) - 1
                if axis != want or pos.shape[1] != 1:
                    raise Blocked(f"{where}: the channels are not its output channels")
                self._root_out(n, pos)
                return
            if op == "Conv":
                w = cg.consts.get(n.input[1])
                group = int(_attr(n, "group", 1))
                if w is not None and w.shape[1] == 1 and group == w.shape[0]:  # depthwise, multiplier 1
                    self._slice(n.input[1], n, 0, pos, "out")
                    if len(n.input) > 2 and n.input[2]:
                        self._slice(n.input[2], n, 0, pos, "param")
                    if n.name not in self.grp.depthwise:
                        self.grp.depthwise.append(n.name)
                    self._push(n.input[0], 1, pos, n)
                    return
            raise Blocked(f"{where}: {cg.root_problem(n.name)}")
        if op in ELEMENTWISE_OPS:
            self._elementwise(n, None, axis, pos, from_output=True)
            return
        if op == "Concat":
            rank = cg.rank(t, where)
            caxis = int(_attr(n, "axis")) % rank
            if caxis != axis:
                for inp in n.input:
                    if inp not in cg.consts:
                        self._push(inp, axis, pos, n)
                return
            offset = 0
            for inp in n.input:
                size = cg.shape(inp, where)[caxis]
                inside = (pos >= offset) & (pos < offset + size)
                if inside.any():
                    if inp in cg.consts:
                        raise Blocked(f"{where}: concatenates a stored tensor {inp!r}")
                    self._push(inp, axis, np.where(inside, pos - offset, -1), n)
                offset += size
            return
        in_axis, in_pos = self._through(n, axis, pos, forward=False)
        self._push(n.input[0], in_axis, in_pos, n)


# --- applying ----------------------------------------------------------------------------------
def prune_groups(model: onnx.ModelProto, cg: OnnxChannelGraph,
                 removals: list[tuple[ChannelGroup, list[int]]]) -> onnx.ModelProto:
    """A copy of ``model`` with the given channels (group indices) of each group removed.

    ``cg`` must be the analysis of ``model``.  Weights are sliced once with the union of the
    positions every group removes; depthwise ``group`` attributes and Reshape target shapes
    follow; intermediate ``value_info`` is dropped (the loader infers shapes again)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    drop: dict[tuple[str, int], set[int]] = defaultdict(set)
    tensor_drop: dict[str, set[int]] = defaultdict(set)
    reshapes: dict[tuple[str, str, int], None] = {}
    depthwise: set[str] = set()
    for grp, channels in removals:
        if grp.blocked:
            raise ValueError(f"group of {grp.roots} is blocked: {grp.blocked}")
        if not channels:
            continue
        for key, positions in grp.removed_positions(channels).items():
            drop[key] |= positions
        idx = np.asarray(sorted(channels), dtype=np.int64)
        for t, (_axis, pos) in grp.tensors.items():
            p = pos[idx].reshape(-1)
            tensor_drop[t].update(int(v) for v in p[p >= 0])
        reshapes.update(dict.fromkeys(grp.reshapes))
        depthwise.update(grp.depthwise)

    by_tensor: dict[str, list[tuple[int, set[int]]]] = defaultdict(list)
    for (tensor, axis), positions in drop.items():
        by_tensor[tensor].append((axis, positions))
    new_arrays: dict[str, np.ndarray] = {}
    for tensor, cuts in by_tensor.items():
        arr = cg.consts[tensor]
        for axis, positions in cuts:
            keep = np.setdiff1d(np.arange(arr.shape[axis]), np.fromiter(positions, dtype=np.int64))
            arr = np.take(arr, keep, axis=axis)
        new_arrays[tensor] = arr

    # Reshape targets: the output's channel dimension shrinks by what left that tensor
    for node_name, y, dim in reshapes:
        node = cg.nodes[node_name]
        target = np.array(cg.consts[node.input[1]]).reshape(-1).copy()
        target[dim] = cg.shapes[y][dim] - len(tensor_drop.get(y, ()))
        new_arrays[node.input[1]] = target.astype(cg.consts[node.input[1]].dtype)

    for init in g.initializer:
        if init.name in new_arrays:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new_arrays.pop(init.name)), init.name))
    for node in g.node:
        if node.op_type == "Constant" and node.output and node.output[0] in new_arrays:
            for a in node.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(new_arrays.pop(node.output[0]), a.t.name))
        if node.name in depthwise:
            w = cg.consts[node.input[1]]
            old_group = int(_attr(node, "group", 1))
            mult = w.shape[0] // old_group
            new_group = (w.shape[0] - len(drop.get((node.input[1], 0), ()))) // mult
            for a in node.attribute:
                if a.name == "group":
                    a.i = new_group
    del g.value_info[:]
    return out
