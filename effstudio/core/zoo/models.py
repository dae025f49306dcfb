"""The trained demo architectures: small, classic networks for 1×32×32 digits, 10 classes.

Module names are what users select layers by (``features.3``, ``layers.1.0.conv1``,
``encoder.layers.2.self_attn``), so every block is a named attribute or a plain
``nn.Sequential`` index.  Each model takes one keyword input ``x`` of shape (N, 1, 32, 32)
and returns logits (N, 10).
"""

from __future__ import annotations

import torch
from torch import nn

IN_CHANNELS = 1
IMAGE_SIZE = 32
NUM_CLASSES = 10


class MLP(nn.Module):
    """Flatten → wide Linear+ReLU layers → classifier (≈1.2 M MACs)."""

    def __init__(self, hidden: tuple[int, ...] = (768, 512), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = IN_CHANNELS * IMAGE_SIZE * IMAGE_SIZE
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(self.flatten(x)))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """VGG-style: three stages of two conv-bn-relu (32, 64, 128 channels) with max pooling between,
    global average pooling and a linear head (≈38 M MACs)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = IN_CHANNELS
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(cin, w) + _conv_bn_relu(w, w)
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --- MobileNetV2-style -------------------------------------------------------------------------

class ConvBNReLU6(nn.Sequential):
    """Conv → BatchNorm → ReLU6 (``groups=channels`` makes it depthwise)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expand (ReLU6) → 3×3 depthwise (ReLU6) → 1×1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper's table
MOBILENET_DEMO_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),  # 32×32
    (6, 24, 2, 2),  # 16×16
    (6, 32, 3, 2),  # 8×8
    (6, 64, 2, 1),
    (6, 96, 1, 1),
)


class MobileNetV2Demo(nn.Module):
    """MobileNetV2 for 32×32 inputs: stride-1 stem, inverted residuals down to 8×8, 1×1 conv to 320
    channels, pooling and a linear classifier (≈19 M MACs)."""

    def __init__(self, settings=MOBILENET_DEMO_SETTINGS, stem: int = 32, last: int = 320,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(IN_CHANNELS, stem)]
        cin = stem
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --- ResNet ------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3×3 conv-bn with a skip connection; a 1×1 conv-bn ``downsample`` projects the skip when
    the stride or the width changes."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetDemo(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, stages of BasicBlocks at 32/16/8 pixels (widths 24/48/96,
    two blocks each), global pooling and ``fc`` (≈59 M MACs)."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96), blocks: tuple[int, ...] = (2, 2, 2),
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1)
                                          for j in range(n)]))
            cin = w
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.avgpool(x)))


# --- ViT ---------------------------------------------------------------------------------------

class ViTDemo(nn.Module):
    """Vision transformer: 4×4 patches embedded by a strided conv (64 tokens + a CLS token), learned
    position embeddings, a pre-norm ``nn.TransformerEncoder`` (batch_first) and a linear head on
    the CLS token (≈22.5 M MACs, 3.2 M of them in attention scores).

    Three heads (of 32 dims) on purpose: PyTorch takes a fused inference fast path
    (``_transformer_encoder_layer_fwd`` / ``_native_multi_head_attention``) only for an even
    head count, and that path skips the submodules, hiding ``self_attn`` and ``linear1`` from
    per-layer hooks and FLOP counters.  With an odd count every layer runs as the modules it is.
    """

    def __init__(self, dim: int = 96, depth: int = 4, heads: int = 3, mlp_dim: int = 192, patch: int = 4,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        tokens = (IMAGE_SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(IN_CHANNELS, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        t = torch.cat([cls, t], dim=1) + self.pos_embed
        t = self.encoder(t)
        return self.head(t[:, 0])


# --- LSTM --------------------------------------------------------------------------------------

class RowLSTM(nn.Module):
    """Reads the image row by row: 32 steps of 32 pixels into a 2-layer ``nn.LSTM`` (hidden 128);
    the last step's hidden state → ``classifier`` (≈6.8 M MACs)."""

    def __init__(self, hidden: int = 128, num_layers: int = 2, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.lstm = nn.LSTM(IN_CHANNELS * IMAGE_SIZE, hidden, num_layers=num_layers, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(0, 2, 1, 3).flatten(2)  # (N, C, H, W) -> (N, H, C*W): one step per row
        out, _ = self.lstm(seq)
        return self.classifier(out[:, -1])
