"""Synthetic layer graphs shaped like real exports, for the graph-view benchmark and screenshots.

``transformer_graph`` looks like an ONNX BERT export scaled up: embeddings, N blocks of
attention (one sub-scope per head, with the Shape/Gather/Concat side chains and the residual
edges that make Sugiyama work hard), an MLP with experts, and a pooler.  ``scoped=False`` gives
the same graph with every layer at top level (an ONNX file without scope metadata).
"""

from __future__ import annotations

import random

from effstudio.core.graph import Layer, LayerGraph, TensorInfo, Weight


class _Builder:
    def __init__(self, seed: int) -> None:
        self.g = LayerGraph()
        self.rng = random.Random(seed)
        self.n = 0

    def op(self, op_type: str, scope: str, inputs: list[str], *, params: int = 0,
           shape: tuple = (1, 128, 768)) -> str:
        self.n += 1
        base = f"{op_type.lower()}_{self.n}"
        name = f"{scope}.{base}" if scope else base
        out = f"{name}:0"
        weights = [Weight(f"{name}.weight", (params,), "float32")] if params else []
        self.g.layers.append(Layer(name, op_type, scope, inputs=list(inputs), outputs=[out], weights=weights))
        self.g.tensors[out] = TensorInfo(out, shape, "float32")
        return out

    def chain(self, scope: str, x: str, n: int, ops: tuple[str, ...]) -> str:
        """``n`` ops in a chain with Shape side chains and short skips, like exported attention."""
        prev2 = x
        for i in range(n):
            op = ops[i % len(ops)]
            if i % 6 == 3:  # Shape -> Gather -> Unsqueeze -> Concat feeding a Reshape
                s = self.op("Shape", scope, [x], shape=(3,))
                s = self.op("Gather", scope, [s], shape=())
                s = self.op("Unsqueeze", scope, [s], shape=(1,))
                x = self.op("Reshape", scope, [x, s])
                continue
            if i % 5 == 4:
                x = self.op("Add", scope, [x, prev2])
                continue
            prev2 = x
            params = self.rng.choice((0, 0, 4096, 65536)) if op in ("MatMul", "Gemm") else 0
            x = self.op(op, scope, [x], params=params)
        return x


def transformer_graph(n_layers: int = 10_000, blocks: int = 12, scoped: bool = True,
                      seed: int = 0) -> LayerGraph:
    """About ``n_layers`` layers in ``blocks`` transformer blocks (see module docstring)."""
    b = _Builder(seed)
    sc = (lambda s: s) if scoped else (lambda s: "")
    per_block = max(40, (n_layers - 40) // blocks)
    heads = max(1, min(16, per_block // 70))
    experts = max(1, min(8, per_block // 110))
    head_ops = max(4, int(per_block * 0.5 / heads / 1.5))
    expert_ops = max(4, int(per_block * 0.35 / experts / 1.5))
    b.g.inputs = [TensorInfo("input_ids", (1, 128), "int64")]
    x = b.op("Gather", sc("embeddings.word"), ["input_ids"], params=23_440_896)
    p = b.op("Gather", sc("embeddings.position"), ["input_ids"], params=393_216)
    x = b.op("Add", sc("embeddings"), [x, p])
    x = b.op("LayerNormalization", sc("embeddings.norm"), [x], params=1536)
    for blk in range(blocks):
        root = f"encoder.layer.{blk}"
        h_outs = []
        for h in range(heads):
            s = sc(f"{root}.attention.self.head.{h}")
            q = b.chain(s, x, head_ops // 3, ("MatMul", "Add", "Transpose"))
            k = b.chain(s, x, head_ops // 3, ("MatMul", "Add", "Transpose"))
            v = b.chain(s, x, head_ops // 3, ("MatMul", "Add", "Transpose"))
            a = b.op("MatMul", s, [q, k])
            a = b.op("Softmax", s, [a])
            h_outs.append(b.op("MatMul", s, [a, v]))
        ctx = b.op("Concat", sc(f"{root}.attention.self"), h_outs)
        o = b.op("MatMul", sc(f"{root}.attention.output.dense"), [ctx], params=589_824)
        o = b.op("Add", sc(f"{root}.attention.output"), [o, x])
        x = b.op("LayerNormalization", sc(f"{root}.attention.output.norm"), [o], params=1536)
        e_outs = []
        for e in range(experts):
            s = sc(f"{root}.mlp.expert.{e}")
            y = b.op("MatMul", s, [x], params=2_359_296, shape=(1, 128, 3072))
            y = b.chain(s, y, expert_ops, ("Mul", "Erf", "Add", "Mul"))
            e_outs.append(b.op("MatMul", s, [y], params=2_359_296))
        y = b.op("Sum", sc(f"{root}.mlp"), e_outs)
        y = b.op("Add", sc(f"{root}.output"), [y, x])
        x = b.op("LayerNormalization", sc(f"{root}.output.norm"), [y], params=1536)
    x = b.op("Gather", sc("pooler"), [x], shape=(1, 768))
    x = b.op("Gemm", sc("pooler.dense"), [x], params=590_592, shape=(1, 768))
    x = b.op("Tanh", sc("pooler"), [x], shape=(1, 768))
    while len(b.g.layers) < n_layers:  # top up to the exact count with a classifier head chain
        x = b.op("Identity", sc("classifier"), [x], shape=(1, 768))
    b.g.outputs = [TensorInfo(x, (1, 768), "float32")]
    return b.g


def cnn_graph(stages: int = 4, blocks_per_stage: int = 2) -> LayerGraph:
    """A ResNet-like CNN: stem, stages of residual blocks, head."""
    b = _Builder(1)
    b.g.inputs = [TensorInfo("x", (1, 3, 224, 224), "float32")]
    size, ch = 112, 64
    x = b.op("Conv", "stem.conv", ["x"], params=9408, shape=(1, ch, size, size))
    x = b.op("BatchNormalization", "stem.bn", [x], params=128, shape=(1, ch, size, size))
    x = b.op("Relu", "stem", [x], shape=(1, ch, size, size))
    size //= 2
    x = b.op("MaxPool", "stem", [x], shape=(1, ch, size, size))
    for s in range(stages):
        for k in range(blocks_per_stage):
            root = f"layer{s + 1}.{k}"
            cin, ch = ch, 64 * 2 ** s
            if k == 0 and s:
                size //= 2
            shp = (1, ch, size, size)
            y = b.op("Conv", f"{root}.conv1", [x], params=cin * ch * 9, shape=shp)
            y = b.op("BatchNormalization", f"{root}.bn1", [y], params=2 * ch, shape=shp)
            y = b.op("Relu", root, [y], shape=shp)
            y = b.op("Conv", f"{root}.conv2", [y], params=ch * ch * 9, shape=shp)
            y = b.op("BatchNormalization", f"{root}.bn2", [y], params=2 * ch, shape=shp)
            if cin != ch:
                x = b.op("Conv", f"{root}.downsample.0", [x], params=cin * ch, shape=shp)
                x = b.op("BatchNormalization", f"{root}.downsample.1", [x], params=2 * ch, shape=shp)
            y = b.op("Add", root, [y, x], shape=shp)
            x = b.op("Relu", root, [y], shape=shp)
    x = b.op("GlobalAveragePool", "head", [x], shape=(1, ch, 1, 1))
    x = b.op("Flatten", "head", [x], shape=(1, ch))
    x = b.op("Gemm", "head.fc", [x], params=ch * 1000 + 1000, shape=(1, 1000))
    b.g.outputs = [TensorInfo(x, (1, 1000), "float32")]
    return b.g
