"""The models of the reproduced papers.

=============================  ==================================================
``MLP(sizes, activation)``     Flatten, then Linear/activation pairs; no activation
                               after the last Linear
``SmallCNN()``                 LeNet-style CIFAR-10 net: conv 3->6 k5, ReLU,
                               maxpool 2, conv 6->16 k5, ReLU, maxpool 2,
                               linear 400->120, ReLU, linear 120->10 (52,202
                               parameters)
``ResNet18(...)``              torchvision's ResNet-18 (BasicBlocks [2, 2, 2, 2]),
                               ImageNet or CIFAR stem, channels scaled by width
``VGG(depth, norm)``           CIFAR VGG (11/13/16/19) with BN, WN or no norm
=============================  ==================================================

Parameter names match PyTorch's modules where PyTorch has the same model
(torchvision's ResNet-18: "conv1.weight", "layer1.0.bn1.weight",
"layer2.0.downsample.0.weight", "fc.bias"), so weights can be mapped over
name by name.
"""
from __future__ import annotations

from .layers import Conv2d, Flatten, Linear, ReLU, Sequential, WeightNorm, activation, flatten
from .module import Module, check_scale, check_size
from .normalization import BatchNorm2d
from .pooling import GlobalAvgPool, MaxPool2d


class MLP(Sequential):
    """Flatten, then for sizes (d0, d1, ..., dL): Linear(d0->d1), act, ...,
    Linear(d_{L-1}->dL). Inputs (N, d0) or anything that flattens to d0 per
    sample (e.g. (N, 1, 28, 28)). Names: "1.weight", "1.bias", "3.weight", ..."""

    def __init__(self, sizes=(784, 128, 10), activation="relu"):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
            raise TypeError(f"MLP: sizes must be a sequence of positive ints (d0, d1, ...), got {sizes!r}")
        sizes = tuple(check_size(s, "MLP", f"sizes[{i}]") for i, s in enumerate(sizes))
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        layers = [Flatten()]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_act(activation))
        super().__init__(*layers)
        self.sizes, self.activation = sizes, activation

    def extra_repr(self):
        return f"{'-'.join(map(str, self.sizes))}, {self.activation}"


class SmallCNN(Module):
    """features: conv C->w1 k5, act, maxpool 2, conv w1->w2 k5, act, maxpool 2;
    classifier: linear (w2·s·s)->hidden, act, linear hidden->classes, with
    s = ((image - 4) / 2 - 4) / 2 (5 for 32x32 inputs, 4 for 28x28).

    At the defaults (3x32x32 inputs, widths (6, 16), hidden 120, 10 classes):
    456 + 2,416 + 48,120 + 1,210 = 52,202 parameters. (This is LeNet-5 without
    its 84-unit layer; the PyTorch tutorial's net with 120->84->10 has 62,006.)"""

    def __init__(self, widths=(6, 16), hidden=120, in_channels=3, num_classes=10, image_size=32,
                 activation="relu"):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) != 2:
            raise TypeError(f"SmallCNN: widths must be a pair of positive ints (w1, w2), got {widths!r}")
        w1, w2 = (check_size(w, "SmallCNN", f"widths[{i}]") for i, w in enumerate(widths))
        hidden, num_classes = check_size(hidden, "SmallCNN", "hidden"), check_size(num_classes, "SmallCNN", "num_classes")
        s = ((check_size(image_size, "SmallCNN", "image_size") - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"SmallCNN: image_size {image_size} is too small (needs at least 16)")
        self.features = Sequential(
            Conv2d(in_channels, w1, 5), _act(activation), MaxPool2d(2),
            Conv2d(w1, w2, 5), _act(activation), MaxPool2d(2),
        )
        self.classifier = Sequential(Linear(w2 * s * s, hidden), _act(activation), Linear(hidden, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(flatten(x))


class BasicBlock(Module):
    """ResNet's basic residual block (He et al., 2016), torchvision's layout:

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),

    conv1 3x3 with the block's stride, conv2 3x3, both without bias.
    shortcut(x) = x, or downsample(x) = BN(conv 1x1, stride s, no bias) when
    the stride is not 1 or the channel count changes."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                         BatchNorm2d(out_channels))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def extra_repr(self):
        return f"{self.in_channels}->{self.out_channels}" + (f", s{self.stride}" if self.stride != 1 else "")

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet18(Module):
    """ResNet-18: stem, four stages of two BasicBlocks with 64, 128, 256, 512
    channels (times ``width``; strides 1, 2, 2, 2), global average pooling,
    linear classifier ``fc``.

    * ``stem="imagenet"``: conv 7x7 stride 2 pad 3 (no bias), BN, ReLU,
      maxpool 3 stride 2 pad 1 (padding with -inf, see nets.pooling);
    * ``stem="cifar"``: conv 3x3 stride 1 pad 1 (no bias), BN, ReLU, no pooling.

    With the ImageNet stem, 1 input channel and 10 classes at width 1:
    11,175,370 parameters (torchvision's 11,689,512 with its 3-channel conv1
    and 1000-class fc)."""

    def __init__(self, in_channels=3, num_classes=10, stem="imagenet", width=1.0):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet18: stem must be 'imagenet' or 'cifar', got {stem!r}")
        check_size(in_channels, "ResNet18", "in_channels"), check_size(num_classes, "ResNet18", "num_classes")
        check_scale(width, "ResNet18", "width")
        c = [max(1, int(round(base * width))) for base in (64, 128, 256, 512)]
        self.stem, self.width = stem, width
        if stem == "imagenet":
            self.conv1 = Conv2d(in_channels, c[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = Conv2d(in_channels, c[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = BatchNorm2d(c[0])
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        channels = c[0]
        for i, (out, stride) in enumerate(zip(c, (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out)))
            channels = out
        self.avgpool = GlobalAvgPool()
        self.fc = Linear(channels, num_classes)

    def extra_repr(self):
        return f"stem={self.stem}, width={self.width}"

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.fc(self.avgpool(x))


VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(Module):
    """CIFAR VGG (Simonyan & Zisserman, 2015, as adapted to 32x32 inputs in
    the widely used pytorch-cifar code): ``features`` are 3x3 convs (padding 1,
    with bias) each followed by the norm and ReLU, with 2x2 max-pools at "M";
    five pools take 32x32 to 1x1, so the features are 512 numbers.

    Classifier: ONE ``Linear(512, num_classes)`` (pytorch-cifar's choice; the
    ImageNet VGG's 4096-4096 MLP with dropout would hold most of the
    parameters and does not fit 1x1 features).

    ``norm``: "bn" (Conv, BatchNorm2d, ReLU), "none" (Conv, ReLU) or "wn"
    (WeightNorm(Conv), ReLU; the classifier is weight-normalized too).
    ``width`` scales every channel count (for cheap tests)."""

    def __init__(self, depth=11, norm="bn", in_channels=3, num_classes=10, width=1.0):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG: depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
        if norm not in ("bn", "none", "wn"):
            raise ValueError(f"VGG: norm must be 'bn', 'none' or 'wn', got {norm!r}")
        check_size(in_channels, "VGG", "in_channels"), check_size(num_classes, "VGG", "num_classes")
        check_scale(width, "VGG", "width")
        self.depth, self.norm = depth, norm
        layers, channels = [], in_channels
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(MaxPool2d(2))
                continue
            out = max(1, int(round(item * width)))
            conv = Conv2d(channels, out, 3, padding=1)
            layers.append(WeightNorm(conv) if norm == "wn" else conv)
            if norm == "bn":
                layers.append(BatchNorm2d(out))
            layers.append(ReLU())
            channels = out
        self.features = Sequential(*layers)
        self.flatten = Flatten()
        fc = Linear(channels, num_classes)
        self.classifier = WeightNorm(fc) if norm == "wn" else fc

    def extra_repr(self):
        return f"depth={self.depth}, norm={self.norm}"

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def _act(name):
    return activation(name)
