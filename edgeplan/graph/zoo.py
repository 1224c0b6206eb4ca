"""Models written in this project (plain nn.Modules, no torchvision), randomly initialised.

Each builder seeds its own RNG (``torch.manual_seed(0)`` inside ``torch.random.fork_rng``),
so the same name always gives the same weights and the caller's RNG is left alone. No
weights are downloaded: edgeplan plans and compiles structure, not accuracy.

``ZooEntry.published_params`` / ``published_macs`` are the figures the literature gives
for each architecture (source in the comment beside each entry); tests compare the traced
counts with them. MACs count multiply-accumulates of convolutions, linear layers and
matmuls only, which is what those sources count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeplan.errors import ModelError


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # batch 1
    description: str
    published_params: int | None
    published_macs: int | None


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return factory().eval()

    build.__name__ = getattr(factory, "__name__", "build")
    build.__doc__ = factory.__doc__
    return build


# --- LeNet-5 -----------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeCun et al. 1998 layout (conv 6, conv 16, fc 120-84-10) with ReLU and max pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


# --- ResNet (ImageNet and CIFAR stems) ---------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; a 1x1 conv + BN projection when the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision's ResNet v1.5), 1x1 expand x4; projection shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """He et al. 2016 ResNet with basic (or ``bottleneck``) blocks. ``cifar``: 3x3 stride-1 stem, no max pool."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int, cifar: bool = False, bottleneck: bool = False):
        super().__init__()
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 64
        for i, n in enumerate(blocks):
            width = 64 * 2**i
            cout = width * (Bottleneck.expansion if bottleneck else 1)
            first_stride = 1 if i == 0 else 2
            if bottleneck:
                stages.append(nn.Sequential(*[Bottleneck(cin if j == 0 else cout, width, first_stride if j == 0 else 1)
                                              for j in range(n)]))
            else:
                stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, first_stride if j == 0 else 1)
                                              for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarBlock(nn.Module):
    """He et al. CIFAR block; option A shortcut: stride-2 subsampling plus zero-padded channels (no params)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """He et al. 2016 section 4.2: 6n+2 layers, widths 16/32/64 on 32x32 inputs, 10 classes."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            stages.append(nn.Sequential(*[CifarBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNetV2 -------------------------------------------------------------------------------


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Sandler et al. 2018: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Width 1.0. ``cifar``: stride 1 in the stem and the first stride-2 stage (32x32 inputs)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, cifar: bool = False):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 1 if cifar else 2)]
        cin = 32
        for i, (t, c, n, s) in enumerate(self.SETTINGS):
            stride = 1 if (cifar and i == 1) else s
            for j in range(n):
                layers.append(InvertedResidual(cin, c, stride if j == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- VGG-16 ------------------------------------------------------------------------------------


class VGG16(nn.Module):
    """Simonyan & Zisserman 2015 configuration D (no batch norm), torchvision's 7x7 adaptive pool."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- Vision Transformer ------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention written with matmuls, so fx traces it into gemm + softmax layers."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # unflatten/flatten instead of reshape(x.shape[0], ...): no shape arithmetic, any batch size
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """Dosovitskiy et al. 2021 ViT: conv patch embedding, class token, learned positions, pre-norm blocks."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: int, num_classes: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --- registry ----------------------------------------------------------------------------------

ZOO: dict[str, ZooEntry] = {
    # LeCun et al. 1998 LeNet-5: 61,706 weights for 32x32 inputs (conv 156 + 2,416; fc 48,120 + 10,164 + 850).
    "lenet5": ZooEntry(_seeded(LeNet5), (1, 1, 32, 32), "LeNet-5, 32x32 grey images, 10 classes", 61_706, None),
    # torchvision model table (weights ResNet18_Weights.IMAGENET1K_V1): 11,689,512 params, 1.81 GFLOPS (MACs).
    "resnet18": ZooEntry(_seeded(lambda: ResNet((2, 2, 2, 2), 1000)), (1, 3, 224, 224),
                         "ResNet-18 (He et al. 2016), ImageNet 224x224, 1000 classes", 11_689_512, 1_810_000_000),
    # torchvision model table (weights ResNet50_Weights.IMAGENET1K_V1): 25,557,032 params, 4.09 GFLOPS (MACs).
    "resnet50": ZooEntry(_seeded(lambda: ResNet((3, 4, 6, 3), 1000, bottleneck=True)), (1, 3, 224, 224),
                         "ResNet-50 (He et al. 2016; torchvision v1.5 bottlenecks), ImageNet 224x224, 1000 classes",
                         25_557_032, 4_090_000_000),
    # The kuangliu/pytorch-cifar ResNet18 layout; the figures torchsummary / thop print for it and CIFAR papers
    # quote: 11,173,962 params, 0.56 GMACs.
    "resnet18-cifar": ZooEntry(_seeded(lambda: ResNet((2, 2, 2, 2), 10, cifar=True)), (1, 3, 32, 32),
                               "ResNet-18 with a CIFAR stem (3x3 stride 1, no max pool), 32x32, 10 classes",
                               11_173_962, 556_000_000),
    # torchvision model table (MobileNet_V2_Weights.IMAGENET1K_V1): 3,504,872 params, 0.30 GFLOPS (MACs);
    # Sandler et al. 2018 Table 4: 3.4M params, 300M multiply-adds.
    "mobilenet_v2": ZooEntry(_seeded(lambda: MobileNetV2(1000)), (1, 3, 224, 224),
                             "MobileNetV2 width 1.0 (Sandler et al. 2018), ImageNet 224x224", 3_504_872, 300_000_000),
    "mobilenet_v2-cifar": ZooEntry(_seeded(lambda: MobileNetV2(10, cifar=True)), (1, 3, 32, 32),
                                   "MobileNetV2 width 1.0 with stride-1 stem and stage 2 for 32x32, 10 classes",
                                   None, None),
    # He et al. 2016 Table 6 (params: 0.46M, 0.85M, 1.7M); MACs as the filter-pruning literature quotes them
    # (Li et al. 2017 "Pruning Filters for Efficient ConvNets": ResNet-56 1.25e8, ResNet-110 2.53e8 "FLOPs",
    # counted as multiply-adds; ResNet-32 6.9e7 in the same line of work).
    "resnet32-cifar": ZooEntry(_seeded(lambda: CifarResNet(5)), (1, 3, 32, 32),
                               "ResNet-32 for CIFAR-10 (He et al. 2016, option A shortcuts)", 460_000, 69_000_000),
    "resnet56-cifar": ZooEntry(_seeded(lambda: CifarResNet(9)), (1, 3, 32, 32),
                               "ResNet-56 for CIFAR-10 (He et al. 2016, option A shortcuts)", 850_000, 125_000_000),
    "resnet110-cifar": ZooEntry(_seeded(lambda: CifarResNet(18)), (1, 3, 32, 32),
                                "ResNet-110 for CIFAR-10 (He et al. 2016, option A shortcuts)", 1_700_000,
                                253_000_000),
    # torchvision model table (VGG16_Weights.IMAGENET1K_V1): 138,357,544 params, 15.47 GFLOPS (MACs).
    "vgg16": ZooEntry(_seeded(lambda: VGG16(1000)), (1, 3, 224, 224),
                      "VGG-16 configuration D (Simonyan & Zisserman 2015), ImageNet 224x224", 138_357_544,
                      15_470_000_000),
    # Our small configuration for 32x32 images: patch 4 (65 tokens), dim 192, depth 6, 3 heads, MLP 768.
    "vit-tiny": ZooEntry(_seeded(lambda: VisionTransformer(32, 4, 192, 6, 3, 4, 10)), (1, 3, 32, 32),
                         "ViT, 32x32 images, patch 4, dim 192, depth 6, 3 heads, MLP 768, 10 classes", None, None),
    # Touvron et al. 2021 DeiT-Ti (ViT-Ti/16 at 224): timm deit_tiny_patch16_224 has 5,717,416 params and
    # 1.26 GMACs (timm benchmark table; the DeiT paper rounds it to 1.3 GFLOPs).
    "deit-tiny": ZooEntry(_seeded(lambda: VisionTransformer(224, 16, 192, 12, 3, 4, 1000)), (1, 3, 224, 224),
                          "DeiT-Tiny / ViT-Ti/16 (Touvron et al. 2021), 224x224, 1000 classes", 5_717_416,
                          1_260_000_000),
}


def get(name: str) -> ZooEntry:
    """The zoo entry ``name``; the error lists the valid names."""
    try:
        return ZOO[name]
    except KeyError:
        raise ModelError(f"unknown zoo model {name!r}; valid names: {', '.join(sorted(ZOO))}") from None
