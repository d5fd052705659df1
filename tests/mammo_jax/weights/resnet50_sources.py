"""Source-framework ResNet50s with random weights and random BatchNorm statistics, and the files
they are published as.

- Keras: `keras.applications.ResNet50(weights=None)`, every weight random (Keras would leave
  biases, betas and moving statistics at 0/1, which would not test their mapping), written in
  the legacy HDF5 layout with tf.keras names (`conv2_block1_1_conv/kernel:0`) or with the old
  keras-applications names and Keras 1 weight names (`res2a_branch2a_W:0`,
  `bn2a_branch2a_running_std:0`), by Keras 3's `save_weights` / `save`, and by Keras's own
  legacy full-model `.h5` save.
- torch: torchvision's resnet50 layout (v1.5: stride on the 3x3) rebuilt from `torch.nn`
  (torchvision is not installable here), `torch.save(model.state_dict())`.
"""

import os

import h5py
import numpy as np

from mammo_jax.weights import resnet50 as rw
from tests.mammo_jax.weights import vgg16_sources

_KERAS2_WEIGHTS = {2: ('kernel', 'bias'), 4: ('gamma', 'beta', 'moving_mean',
                                             'moving_variance')}
_KERAS1_WEIGHTS = {2: ('W', 'b'), 4: ('gamma', 'beta', 'running_mean', 'running_std')}


def random_bn(rng, n: int) -> list[np.ndarray]:
  """gamma, beta, moving mean, moving variance (positive), float32."""
  return [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
          rng.uniform(0.5, 1.5, n)]


def keras_resnet50(include_top: bool, size: int | None, classes: int = 10, seed: int = 0):
  """keras.applications.ResNet50, random weights and statistics; logits with the top."""
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.applications.ResNet50(weights=None, include_top=include_top,
                                      input_shape=(size, size, 3), classes=classes,
                                      classifier_activation=None)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if len(weights) == 4:
      weights = random_bn(rng, weights[0].shape[0])
    elif weights:
      std = np.sqrt(2.0 / np.prod(weights[0].shape[:-1]))
      weights = [rng.normal(0, std, weights[0].shape), rng.normal(0, 0.1, weights[1].shape)]
    layer.set_weights([w.astype(np.float32) for w in weights])
  return model


def write_keras_legacy_h5(path: str, model, naming: str) -> None:
  """The keras-applications HDF5 layout of `model`'s layers (see vgg16_sources): naming
  'tf_keras' (Keras 2 names) or 'old' (keras-applications' first names, Keras 1 weights)."""
  renamed = {} if naming == 'tf_keras' else rw.OLD_KERAS_NAMES
  kinds = _KERAS2_WEIGHTS if naming == 'tf_keras' else _KERAS1_WEIGHTS
  with h5py.File(path, 'w') as f:
    names = [renamed.get(layer.name, layer.name) for layer in model.layers]
    f.attrs['layer_names'] = np.array([n.encode() for n in names])
    f.attrs['backend'] = b'tensorflow'
    f.attrs['keras_version'] = b'2.2.4' if naming == 'tf_keras' else b'1.2.2'
    for name, layer in zip(names, model.layers):
      weights = layer.get_weights()
      group = f.create_group(name)
      if naming == 'tf_keras':
        weight_names = [f'{name}/{w}:0' for w in kinds.get(len(weights), ())]
      else:
        weight_names = [f'{name}_{w}:0' for w in kinds.get(len(weights), ())]
      group.attrs['weight_names'] = np.array([n.encode() for n in weight_names], dtype='S')
      for weight_name, value in zip(weight_names, weights):
        group.create_dataset(weight_name, data=value)


def torch_resnet50(classes: int = 10, seed: int = 0):
  """torchvision.models.resnet50's module layout (same state-dict keys), random, eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Bottleneck(nn.Module):

    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * width)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or cin != 4 * width:
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(4 * width))

    def forward(self, x):
      shortcut = x if self.downsample is None else self.downsample(x)
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      return self.relu(self.bn3(self.conv3(y)) + shortcut)

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
      cin = 64
      for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        layer = []
        for b in range(blocks):
          layer.append(Bottleneck(cin, width, 2 if b == 0 and i > 1 else 1))
          cin = 4 * width
        setattr(self, f'layer{i}', nn.Sequential(*layer))
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(2048, classes)

    def features(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
      return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  model = ResNet()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        module.weight.normal_(0.0, float(np.sqrt(2.0 / module.weight[0].numel())))
        if module.bias is not None:
          module.bias.normal_(0.0, 0.1)
      elif isinstance(module, nn.BatchNorm2d):
        values = random_bn(rng, module.num_features)
        for tensor, value in zip((module.weight, module.bias, module.running_mean,
                                  module.running_var), values):
          tensor.copy_(torch.from_numpy(value.astype(np.float32)))
  return model.eval()


class Sources:
  """Source models and their files, built once per test module."""

  def __init__(self, root):
    self.root = root
    self._cache = {}

  def keras(self, include_top: bool):
    """(model, {kind: path}); the no-top model takes any input size."""
    key = ('keras', include_top)
    if key not in self._cache:
      model = keras_resnet50(include_top, 64 if include_top else None)
      stem = os.path.join(self.root, f'keras_{"top" if include_top else "notop"}')
      files = {}
      for naming in ('tf_keras', 'old'):
        files[naming] = f'{stem}_{naming}.h5'
        write_keras_legacy_h5(files[naming], model, naming)
      files.update(vgg16_sources.save_keras_files(model, stem))
      self._cache[key] = model, files
    return self._cache[key]

  def torch(self):
    """(model, {'zip': path, 'legacy': path})."""
    if 'torch' not in self._cache:
      import torch  # pylint: disable=g-import-not-at-top
      model = torch_resnet50()
      files = {'zip': os.path.join(self.root, 'resnet50.pth'),
               'legacy': os.path.join(self.root, 'resnet50_legacy.pth')}
      torch.save(model.state_dict(), files['zip'])
      torch.save(model.state_dict(), files['legacy'], _use_new_zipfile_serialization=False)
      self._cache['torch'] = model, files
    return self._cache['torch']

  @staticmethod
  def inputs(size: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(size).normal(0, scale, (2, size, size, 3)).astype(np.float32)
