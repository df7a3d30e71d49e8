"""PyTorch twins of the nets models, built from torch.nn modules, and the
map from tinygrad2's flat θ to their parameters (torch is imported here, so
import this module only where torch is installed).

* :func:`twin` builds the torch.nn model for a ``nets`` model: MLP,
  SmallCNN, ResNet18 (both stems), VGG (BN, weight norm or none). Weight
  norm is ``torch.nn.utils.parametrizations.weight_norm`` (PyTorch's current
  API, the fused ``torch._weight_norm`` kernel), whose parameters are
  ``....parametrizations.weight.original0`` (g, shape (out, 1, ...)) and
  ``original1`` (v).
* :func:`parameter_map` lists, in θ's layout order, (torch name, torch
  shape, slice of θ) for every parameter, and checks that the twin has
  exactly these parameters.
* :func:`flat_function` turns (twin, map, buffers, X, y) into f(θ) -> the
  mean softmax cross-entropy, a function of ONE flat torch tensor, through
  ``torch.func.functional_call``; every call gets fresh copies of the
  buffers, so train-mode BatchNorm updates copies and leaves the twin alone.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import nets


def _weight_norm(layer, on):
    return nn.utils.parametrizations.weight_norm(layer) if on else layer


class Block(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, m):
        super().__init__()
        self.conv1 = nn.Conv2d(m.in_channels, m.out_channels, 3, m.stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m.out_channels)
        self.conv2 = nn.Conv2d(m.out_channels, m.out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(m.out_channels)
        self.downsample = None
        if m.downsample is not None:
            self.downsample = nn.Sequential(nn.Conv2d(m.in_channels, m.out_channels, 1, m.stride, bias=False),
                                            nn.BatchNorm2d(m.out_channels))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, m):
        super().__init__()
        c = m.conv1
        self.conv1 = nn.Conv2d(c.in_channels, c.out_channels, c.kernel, c.stride, c.padding, bias=False)
        self.bn1 = nn.BatchNorm2d(c.out_channels)
        self.pool = m.stem == "imagenet"
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(*[Block(b) for b in getattr(m, f"layer{i}")]))
        self.fc = nn.Linear(m.fc.in_features, m.fc.out_features)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.pool:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class Features(nn.Module):
    """``features`` then ``classifier`` on the flattened features (SmallCNN, VGG)."""

    def __init__(self, features, classifier):
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


ACTIVATIONS = {nets.layers.ReLU: nn.ReLU, nets.layers.Tanh: nn.Tanh, nets.layers.Softplus: nn.Softplus,
               nets.layers.GELU: lambda: nn.GELU(approximate="tanh")}


def _layers(modules, wn=False):
    """torch.nn counterparts of a Sequential's layers, index for index."""
    out = []
    for m in modules:
        if isinstance(m, nets.WeightNorm):
            out.append(_layers([m._layer], wn=True)[0])
        elif isinstance(m, nets.Conv2d):
            out.append(_weight_norm(nn.Conv2d(m.in_channels, m.out_channels, m.kernel, m.stride, m.padding,
                                              bias=m.has_bias), wn))
        elif isinstance(m, nets.Linear):
            out.append(_weight_norm(nn.Linear(m.in_features, m.out_features, bias=m.has_bias), wn))
        elif isinstance(m, nets.BatchNorm2d):
            out.append(nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum))
        elif isinstance(m, nets.MaxPool2d):
            out.append(nn.MaxPool2d(m.kernel, m.stride, m.padding))
        elif isinstance(m, nets.Flatten):
            out.append(nn.Flatten())
        elif type(m) in ACTIVATIONS:
            out.append(ACTIVATIONS[type(m)]())
        else:
            raise TypeError(f"torch_twins: no torch counterpart for {m!r}")
    return out


def twin(model):
    """A float64 torch.nn model computing what ``model`` computes, with
    PyTorch's parameter names (values not set: see :func:`load`)."""
    if isinstance(model, nets.MLP):
        out = nn.Sequential(*_layers(model))
    elif isinstance(model, nets.SmallCNN):
        out = Features(nn.Sequential(*_layers(model.features)), nn.Sequential(*_layers(model.classifier)))
    elif isinstance(model, nets.ResNet18):
        out = ResNet18(model)
    elif isinstance(model, nets.VGG):
        out = Features(nn.Sequential(*_layers(model.features)), _layers([model.classifier])[0])
    else:
        raise TypeError(f"torch_twins.twin: no twin for {type(model).__name__}")
    return out.double()


def torch_name(name):
    """tinygrad2's parameter name -> PyTorch's (weight norm's g and v move
    under ``parametrizations.weight``)."""
    prefix, _, local = name.rpartition(".")
    wn = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    if local in wn:
        return f"{prefix}.{wn[local]}" if prefix else wn[local]
    return name


def parameter_map(model, net):
    """[(torch name, torch shape, slice of θ)] in layout order; raises if
    the twin ``net`` has other parameters or other sizes."""
    params = dict(net.named_parameters())
    out = []
    for p in model.layout():
        name = torch_name(p.name)
        if name not in params:
            raise KeyError(f"torch_twins: '{p.name}' ({name}) has no counterpart in the torch twin")
        shape = tuple(params[name].shape)
        if int(np.prod(shape)) != int(np.prod(p.shape)):
            raise ValueError(f"torch_twins: '{p.name}' has shape {p.shape}, torch's {name} {shape}")
        out.append((name, shape, p.slice))
    extra = set(params) - {name for name, _, _ in out}
    if extra:
        raise KeyError(f"torch_twins: torch parameters without a tinygrad2 counterpart: {sorted(extra)}")
    return out


def buffers_of(model, net):
    """The model's BatchNorm buffers as float64 torch tensors, by torch's
    names, plus ``num_batches_tracked`` (0) for each BatchNorm."""
    out = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in model.named_buffers().items()}
    for name, buf in net.named_buffers():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(buf)
    missing = {name for name, _ in net.named_buffers()} ^ set(out)
    if missing:
        raise KeyError(f"torch_twins: buffers differ between the model and its twin: {sorted(missing)}")
    return out


def unflatten(flat, pmap):
    """{torch name: view of the flat tensor, in torch's shape}."""
    return {name: flat[s].reshape(shape) for name, shape, s in pmap}


def load(net, flat, pmap, buffers):
    """Copy θ (a torch tensor) and the buffers into the twin's own tensors."""
    state = {**{k: v.detach().clone() for k, v in unflatten(flat, pmap).items()},
             **{k: v.clone() for k, v in buffers.items()}}
    with torch.no_grad():
        for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
            tensor.copy_(state[name])
    return net


def flat_function(net, pmap, buffers, X, y):
    """f(θ) = mean cross-entropy of the twin's outputs, θ ONE flat tensor
    (``torch.func.functional_call`` over the twin's parameters and fresh
    copies of its buffers)."""
    from torch.func import functional_call

    def f(flat):
        state = {**unflatten(flat, pmap), **{k: v.clone() for k, v in buffers.items()}}
        return nn.functional.cross_entropy(functional_call(net, state, (X,)), y)

    return f
