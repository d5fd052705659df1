"""The benchmarked networks in torch.nn, built from the attributes of mammo_jax's own modules.

benchmarks/gpu_step.py times each mammo_jax train step against the same network in PyTorch:
the scratch CNNs (ScratchCNN), VGG16 with the study's head (VGG16Classifier) and ResNet50 v1
in Keras's variant (ResNet50Classifier: stride on a stage's first 1x1 convolution, convolutions
with bias). Layer shapes, strides, paddings, head and frozen layers follow the flax module; the
initial values do not matter for timing. Needs only torch (no torchvision).
"""

from __future__ import annotations

import torch
from torch import nn

from mammo_jax.models import resnet as jax_resnet
from mammo_jax.models import vgg16 as jax_vgg16


class Scratch(nn.Module):
  """ScratchCNN: [conv(valid) -> ReLU -> 2x2 max-pool] per width, Dense-ReLU-Dropout-Dense."""

  def __init__(self, module, side: int, channels: int):
    super().__init__()
    layers, c, s = [], channels, side
    for i, width in enumerate(module.filters):
      k, st = (module.first_kernel, module.first_stride) if i == 0 else (3, 1)
      layers += [nn.Conv2d(c, width, k, st), nn.ReLU(), nn.MaxPool2d(2)]
      c, s = width, ((s - k) // st + 1) // 2
    self.features = nn.Sequential(*layers)
    head = [nn.Flatten(), nn.Linear(c * s * s, module.dense), nn.ReLU()]
    head += [nn.Dropout(module.dropout)] if module.dropout else []
    self.head = nn.Sequential(*head, nn.Linear(module.dense, module.num_outputs))

  def forward(self, x):
    return self.head(self.features(x))


def _transfer_head(features: int, module) -> nn.Sequential:
  """models.layers.transfer_head: [dropout] -> [Dense(fc, relu)] -> Dense(outputs)."""
  head = [nn.Dropout(module.dropout)] if module.dropout else []
  if module.fc:
    head += [nn.Linear(features, module.fc), nn.ReLU()]
  return nn.Sequential(*head, nn.Linear(module.fc or features, module.num_outputs))


class VGG16(nn.Module):
  """VGG16Classifier with flatten pooling; `trainable` names the flax parameter paths."""

  def __init__(self, module, side: int, trainable: str):
    super().__init__()
    layers, c, names = [], 3, iter(jax_vgg16.CONV_NAMES)
    for filters, n in jax_vgg16.BLOCKS:
      for _ in range(n):
        conv = nn.Conv2d(c, filters, 3, padding=1)
        frozen = trainable != 'all' and f'vgg16/{next(names)}' not in trainable.split(',')
        conv.requires_grad_(not frozen)
        layers += [conv, nn.ReLU()]
        c = filters
      layers.append(nn.MaxPool2d(2))
    self.features = nn.Sequential(*layers)
    self.head = nn.Sequential(nn.Flatten(), _transfer_head(c * (side // 32) ** 2, module))

  def forward(self, x):
    return self.head(self.features(x))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True):
  layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, bias=True),
            nn.BatchNorm2d(c_out, eps=1.001e-5, momentum=0.01)]
  return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Bottleneck(nn.Module):
  """Keras's ResNet50 v1 block: the stride on the first 1x1 convolution."""

  def __init__(self, c_in: int, width: int, stride: int, project: bool):
    super().__init__()
    self.branch = nn.Sequential(_conv_bn(c_in, width, 1, stride), _conv_bn(width, width, 3),
                                _conv_bn(width, 4 * width, 1, relu=False))
    self.shortcut = _conv_bn(c_in, 4 * width, 1, stride, relu=False) if project else None

  def forward(self, x):
    short = x if self.shortcut is None else self.shortcut(x)
    return torch.relu(self.branch(x) + short)


class ResNet50(nn.Module):
  """ResNet50Classifier (variant 'keras'), every layer trainable, BatchNorm in training mode."""

  def __init__(self, module):
    super().__init__()
    if module.variant != 'keras':
      raise ValueError(f'torch_nets.ResNet50 builds the keras variant, not {module.variant!r}')
    blocks, c = [_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, padding=1)], 64
    for stage, width, n in jax_resnet.STAGES:
      for b in range(n):
        blocks.append(Bottleneck(c, width, 2 if b == 0 and stage > 2 else 1, b == 0))
        c = 4 * width
    self.features = nn.Sequential(*blocks)
    self.head = _transfer_head(c, module)

  def forward(self, x):
    return self.head(self.features(x).mean(dim=(2, 3)))


def build(module, side: int, channels: int, trainable: str) -> nn.Module:
  """The torch network of a mammo_jax module (as train.create_model returns it)."""
  name = type(module).__name__
  if name == 'ScratchCNN':
    return Scratch(module, side, channels)
  if name == 'VGG16Classifier' and module.pooling == 'flatten':
    return VGG16(module, side, trainable)
  if name == 'ResNet50Classifier' and trainable == 'all':
    return ResNet50(module)
  raise ValueError(f'no torch network for {module!r} with trainable={trainable!r}')
