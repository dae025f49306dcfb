"""Helpers of test_real_models.py: third-party model files, small models with closed-form MACs,
and an onnxruntime-based reference count of the MAC ops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package (found without importing it), else skip."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        pytest.skip(f"{path} is not in this version of {package}")
    return path


def unknown_shapes(graph) -> list[tuple[str, str]]:
    """(layer, op) of every layer (subgraphs included) with an output of unknown or symbolic shape."""
    out = []

    def visit(g) -> None:
        for lay in g.layers:
            for s in g.output_shapes(lay):
                if s is None or not all(isinstance(d, int) for d in s):
                    out.append((lay.name, lay.op_type))
                    break
            for sub in lay.subgraphs.values():
                visit(sub)

    visit(graph)
    return out


# --- a reference count of the MAC ops, from the shapes onnxruntime actually produces ---------------
def ort_reference_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int:
    """Conv / MatMul / Gemm MACs of the main graph from the tensors of one onnxruntime run
    (independent of effstudio's shape inference): conv ``numel(Y) * prod(W[1:])``, matmul
    ``prod(batch) * M * K * N``, gemm ``M * K * N``."""
    import onnxruntime as ort

    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    names = sorted({x for n in nodes for x in (*n.input[:2], n.output[0]) if x and x not in inits and x not in feeds})
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=x) for x in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    values = dict(zip(out_names, sess.run(out_names, feeds), strict=True))

    def shape(x: str) -> tuple[int, ...]:
        return inits[x] if x in inits else tuple(feeds[x].shape if x in feeds else values[x].shape)

    total = 0
    for n in nodes:
        if n.op_type == "Conv":
            total += int(np.prod(shape(n.output[0]))) * int(np.prod(shape(n.input[1])[1:]))
        elif n.op_type == "MatMul":
            a, b = shape(n.input[0]), shape(n.input[1])
            a2 = (1, *a) if len(a) == 1 else a
            b2 = (*b, 1) if len(b) == 1 else b
            batch = np.broadcast_shapes(a2[:-2], b2[:-2])
            total += int(np.prod(batch)) * a2[-2] * a2[-1] * b2[-1]
        else:
            y, a = shape(n.output[0]), shape(n.input[0])
            trans_a = any(x.name == "transA" and x.i for x in n.attribute)
            total += y[0] * y[1] * (a[0] if trans_a else a[1])
    return total


# --- small models with closed-form MACs ------------------------------------------------------------
class SmallCNN(nn.Module):
    """conv 3->8 (3x3) + BN + ReLU, depthwise 3x3, max-pool, bilinear x2, global mean, linear 8->5."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.nn.functional.max_pool2d(self.c2(y), 2)
        return self.fc(self.up(y).mean(dim=(2, 3)))


def small_cnn_macs(n: int, h: int, w: int) -> int:
    return n * 8 * h * w * 3 * 9 + n * 8 * h * w * 9 + n * 8 * 5


class SmallRNN(nn.Module):
    """2-layer bidirectional LSTM 16->32, GRU 64->24, linear 24->3 (batch first)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(64, 24, batch_first=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.fc(y)


def small_rnn_macs(batch: int, steps: int) -> int:
    """Per token: every weight matrix once (W_ih and W_hh of each layer and direction)."""
    lstm = 2 * (4 * 32 * 16 + 4 * 32 * 32) + 2 * (4 * 32 * 64 + 4 * 32 * 32)
    gru = 3 * 24 * 64 + 3 * 24 * 24
    return batch * steps * (lstm + gru + 24 * 3)


def transformer_macs(seq: int, hidden: int, layers: int, ffn: int, *, kv: int | None = None,
                     gated: bool = False, head: int = 0) -> int:
    """An encoder/decoder stack: q/k/v/o projections (k, v of width ``kv`` for GQA), the two
    attention products over the full ``seq x seq`` scores, the MLP (3 matrices when gated), and an
    optional ``hidden x head`` output projection."""
    kv = hidden if kv is None else kv
    proj = seq * hidden * (2 * hidden + 2 * kv)
    attn = 2 * seq * seq * hidden
    mlp = (3 if gated else 2) * seq * hidden * ffn
    return layers * (proj + attn + mlp) + seq * hidden * head
