"""Published numbers of the zoo's reference architectures (random weights): ResNet-50,
MobileNetV2, BERT-base (``effstudio.core.zoo.reference``).

Each MAC total is also checked against a closed form computed independently from the module
(forward hooks on every Conv / Linear: ``numel(out) * in/groups * prod(kernel)``), and against
torch's FlopCounterMode through ``totals["flop_counter_check"]``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.metrics import compute_static
from effstudio.core.progress import Progress
from effstudio.core.zoo.reference import bert_base, mobilenet_v2, resnet50


def hooked_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Conv + Linear MACs of one forward, from the modules' own shapes (an independent closed form)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return total


def bn_buffer_elements(module: nn.Module) -> int:
    return sum(2 * m.num_features for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def _vision(factory):
    torch.manual_seed(0)
    module = factory().eval()
    x = torch.randn(1, 3, 224, 224)
    return module, x, loaded_from_module(module, {"x": x}, path=factory.__name__, format="torch-module")


def _export_onnx(module, kwargs, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), str(path), kwargs=kwargs, dynamo=True, verbose=False)
    return load_onnx(path, inputs={}, progress=Progress())


@pytest.mark.slow
def test_resnet50():
    module, x, loaded = _vision(resnet50)
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    # 25,557,032 trainable parameters (torchvision); the IR also counts the BatchNorm running
    # mean / variance, which are float tensors the model stores (53,120 elements)
    assert sum(p.numel() for p in module.parameters()) == 25_557_032
    assert t.totals["params"] == 25_557_032 + bn_buffer_elements(module)
    # 4.09 GMACs at 224x224 (torchvision's "4.09 GFLOPS" are MACs): convs + the FC, no BN/ReLU/pool
    macs = t.totals["macs"]
    assert macs == hooked_macs(module, x) == 4_089_184_256
    assert abs(macs - 4.09e9) / 4.09e9 < 0.005
    assert t.totals["flop_counter_check"]["ratio"] == 1.0
    # FLOPs = 2 x MACs + the FC bias + BN (2/elt) + ReLU + residual adds + pools: ~0.5 % above 2 x MACs
    assert 2 * macs < t.totals["flops"] < 2.01 * macs
    # (the ONNX export of ResNet-50 counts the same MACs: see tests/benchmarks/bench_flops.py; the
    # small ONNX cases in test_flops.py cover each op)


@pytest.mark.slow
def test_mobilenet_v2():
    module, x, loaded = _vision(mobilenet_v2)
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    assert sum(p.numel() for p in module.parameters()) == 3_504_872
    assert t.totals["params"] == 3_504_872 + bn_buffer_elements(module)
    # ~300 M MACs (the paper's 300 M counts the convolutions; our 300.77 M adds the 1.28 M FC)
    macs = t.totals["macs"]
    assert macs == hooked_macs(module, x) == 300_774_272
    assert abs(macs - 300e6) / 300e6 < 0.01
    assert t.totals["flop_counter_check"]["ratio"] == 1.0
    # depthwise convs are where MobileNetV2's MACs are cheap: check one per-layer value
    dw = next(lay for lay in loaded.graph.layers if lay.op_type == "conv2d" and lay.attributes.get("groups") == 32)
    assert t.get("macs", dw.name) == 32 * 112 * 112 * 9


def bert_macs(layers: int, hidden: int, inter: int, seq: int) -> int:
    """Per layer: Q, K, V, O projections (4 L H^2) + scores and context (2 L^2 H) + FFN (2 L H I);
    plus the pooler (H^2 for the first token)."""
    return layers * (4 * seq * hidden ** 2 + 2 * seq * seq * hidden + 2 * seq * hidden * inter) + hidden ** 2


@pytest.mark.slow
def test_bert_base():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    module = bert_base().eval()  # eager attention: the products are matmuls
    ids = torch.randint(0, 30522, (1, 128))
    t = compute_static(loaded_from_module(module, {"input_ids": ids}, path="bert", format="torch-module"))
    assert t.uncounted_ops == []
    # 109,482,240 parameters (~110 M: embeddings 23.8 M, 12 layers x 7.1 M, pooler 0.6 M); its
    # buffers (position / token-type ids) are int64 index data, not parameters
    assert t.totals["params"] == sum(p.numel() for p in module.parameters()) == 109_482_240
    assert t.totals["macs"] == bert_macs(12, 768, 3072, 128) == 11_174_215_680  # ~11.2 GMACs
    assert t.totals["flop_counter_check"]["ratio"] == 1.0


@pytest.mark.slow
def test_small_bert_onnx_with_sdpa_agrees_with_torch(tmp_path):
    """A BERT exported with SDPA has IsNaN / Where guards (onnx-tool cannot infer through them)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=500)
    module = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 500, (1, 32))
    t_torch = compute_static(loaded_from_module(module, {"input_ids": ids}, path="bert", format="torch-module"))
    loaded = _export_onnx(module, {"input_ids": ids}, tmp_path / "bert.onnx")
    t_onnx = compute_static(loaded)
    assert t_onnx.uncounted_ops == [] and t_torch.uncounted_ops == []
    assert t_onnx.totals["macs"] == t_torch.totals["macs"] == bert_macs(2, 64, 128, 32)
    assert any(lay.op_type == "IsNaN" for lay in loaded.graph.layers)
