"""Source-framework VGG16s with random weights, and writers of the files they are published as.

- Keras: `keras.applications.VGG16(weights=None)` with random kernels and biases (Keras
  would leave biases at zero, which would not test their mapping), written in the legacy
  keras-applications HDF5 layout (both naming styles), by Keras 3's `save_weights`, or by
  Keras's own full-model `.h5` save.
- torch: torchvision's VGG16 layout rebuilt from `torch.nn` (torchvision is not installable
  here), saved with `torch.save(model.state_dict())`.

`Sources` builds them and their files once per test module (the `sources` fixture).
"""

import os
import warnings

import h5py
import numpy as np


def randomise_keras(model, seed: int = 0):
  """He-scaled normal kernels and small normal biases, so activations keep their scale."""
  rng = np.random.default_rng(seed)
  weights = []
  for w in model.get_weights():
    if w.ndim == 1:
      weights.append(rng.normal(0.0, 0.1, w.shape).astype(np.float32))
    else:
      std = np.sqrt(2.0 / np.prod(w.shape[:-1]))
      weights.append((rng.standard_normal(w.shape, dtype=np.float32) * std))
  model.set_weights(weights)
  return model


def keras_vgg16(include_top: bool, size: int | None, classes: int = 1000, seed: int = 0):
  """keras.applications.VGG16 with random weights; logits (no softmax) with the top.

  size None builds a no-top model for any input size.
  """
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.applications.VGG16(
      weights=None, include_top=include_top, input_shape=(size, size, 3), classes=classes,
      classifier_activation=None)
  return randomise_keras(model, seed)


def keras_layers(model) -> list[tuple[str, list[np.ndarray]]]:
  """(layer name, [kernel, bias] or []) for every layer of a Keras model, in order."""
  return [(layer.name, layer.get_weights()) for layer in model.layers]


def write_keras_legacy_h5(path, layers, naming: str = 'keras2') -> None:
  """keras-applications' HDF5 layout: the published vgg16_weights_tf_dim_ordering_* files.

  Root attributes layer_names, backend, keras_version; one group per layer, weightless
  layers included, each with a weight_names attribute. naming 'keras1' gives
  `block1_conv1_W_1:0` datasets in the layer group; 'keras2' gives `block1_conv1/kernel:0`,
  a dataset `kernel:0` in a subgroup `block1_conv1`.
  """
  if naming not in ('keras1', 'keras2'):
    raise ValueError(naming)
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = np.array([name.encode() for name, _ in layers])
    f.attrs['backend'] = b'tensorflow'
    f.attrs['keras_version'] = b'1.2.2' if naming == 'keras1' else b'2.2.4'
    for name, weights in layers:
      group = f.create_group(name)
      if naming == 'keras1':
        names = [f'{name}_W_1:0', f'{name}_b_1:0']
      else:
        names = [f'{name}/kernel:0', f'{name}/bias:0']
      names = names[:len(weights)]
      group.attrs['weight_names'] = np.array([n.encode() for n in names], dtype='S')
      for weight_name, value in zip(names, weights):
        group.create_dataset(weight_name, data=value)


def save_keras_files(model, stem: str) -> dict[str, str]:
  """The files Keras itself writes for `model`: {'keras3': STEM.weights.h5 (save_weights),
  'keras_archive': STEM.keras, 'keras_full_h5': STEM_full.h5 (its legacy full-model save)}."""
  files = {'keras3': f'{stem}.weights.h5', 'keras_archive': f'{stem}.keras',
           'keras_full_h5': f'{stem}_full.h5'}
  model.save_weights(files['keras3'])
  model.save(files['keras_archive'])
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "legacy format" advice
    model.save(files['keras_full_h5'])
  return files


def numpy_vgg16_layers(include_top: bool, seed: int = 0, fc1_inputs: int = 25088,
                       fc_units: int = 4096, classes: int = 1000):
  """keras_layers() of a VGG16 without Keras: random arrays, for tests about files only."""
  rng = np.random.default_rng(seed)
  channels = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  per_block = (2, 2, 3, 3, 3)
  layers, k = [('input_1', [])], 0
  for b, n in enumerate(per_block, 1):
    for i in range(1, n + 1):
      cin, cout = channels[k]
      k += 1
      layers.append((f'block{b}_conv{i}', [
          rng.standard_normal((3, 3, cin, cout), dtype=np.float32),
          rng.standard_normal((cout,), dtype=np.float32)]))
    layers.append((f'block{b}_pool', []))
  if include_top:
    layers.append(('flatten', []))
    for name, shape in (('fc1', (fc1_inputs, fc_units)), ('fc2', (fc_units, fc_units)),
                        ('predictions', (fc_units, classes))):
      layers.append((name, [rng.standard_normal(shape, dtype=np.float32),
                            rng.standard_normal(shape[1:], dtype=np.float32)]))
  return layers


_TORCH_FEATURES = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
                   512, 512, 512, 'M')


def torch_vgg16(pool=(7, 7), fc_units: int = 4096, classes: int = 1000, seed: int = 0):
  """torchvision.models.vgg16's module layout (same state-dict keys), random weights, eval.

  pool, fc_units and classes other than torchvision's (7, 7), 4096 and 1000 give small
  models with the same layout for fast tests.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      layers, cin = [], 3
      for v in _TORCH_FEATURES:
        if v == 'M':
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
          layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
          cin = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d(pool)
      self.classifier = nn.Sequential(
          nn.Linear(512 * pool[0] * pool[1], fc_units), nn.ReLU(True), nn.Dropout(),
          nn.Linear(fc_units, fc_units), nn.ReLU(True), nn.Dropout(),
          nn.Linear(fc_units, classes))

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  torch.manual_seed(seed)
  model = VGG()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, float(np.sqrt(2.0 / fan_in)))
        module.bias.normal_(0.0, 0.1)
  return model.eval()


def layers_to_params(layers):
  """keras_layers() -> {layer: {'kernel', 'bias'}}, the layers with weights."""
  return {name: {'kernel': w[0], 'bias': w[1]} for name, w in layers if w}


class Sources:
  """Source models and their files, built once per test module."""

  def __init__(self, root):
    self.root = root
    self._keras, self._torch, self._refs = {}, {}, {}

  def keras(self, include_top: bool, size: int):
    """(model, {file kind: path}); one no-top model serves every input size."""
    key = (include_top, size if include_top else None)
    if key not in self._keras:
      classes = 10 if include_top and size == 32 else 1000
      model = keras_vgg16(include_top, key[1], classes=classes)
      stem = os.path.join(self.root, f'keras_{"top" if include_top else "notop"}_{key[1]}')
      layers = keras_layers(model)
      files = {}
      for naming in ('keras1', 'keras2'):
        files[naming] = f'{stem}_{naming}.h5'
        write_keras_legacy_h5(files[naming], layers, naming)
      files.update(save_keras_files(model, stem))
      self._keras[key] = model, files
    return self._keras[key]

  def keras_ref(self, include_top: bool, size: int):
    key = ('keras', include_top, size)
    if key not in self._refs:
      x = np.random.default_rng(size).normal(0, 50, (2, size, size, 3)).astype(np.float32)
      model, _ = self.keras(include_top, size)
      self._refs[key] = x, np.asarray(model(x, training=False))
    return self._refs[key]

  def torch(self, layout: str):
    """(model, {'zip': path, 'legacy': path}); layout 'small' or 'torchvision'."""
    if layout not in self._torch:
      import torch  # pylint: disable=g-import-not-at-top
      kwargs = dict(pool=(3, 3), fc_units=64, classes=10) if layout == 'small' else {}
      model = torch_vgg16(**kwargs)
      files = {'zip': os.path.join(self.root, f'torch_{layout}.pth'),
               'legacy': os.path.join(self.root, f'torch_{layout}_legacy.pth')}
      torch.save(model.state_dict(), files['zip'])
      torch.save(model.state_dict(), files['legacy'], _use_new_zipfile_serialization=False)
      self._torch[layout] = model, files
    return self._torch[layout]

  def torch_ref(self, layout: str, include_top: bool, size: int):
    key = ('torch', layout, include_top, size)
    if key not in self._refs:
      import torch  # pylint: disable=g-import-not-at-top
      x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
      model, _ = self.torch(layout)
      with torch.no_grad():
        nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        ref = model(nchw) if include_top else model.features(nchw).permute(0, 2, 3, 1)
      self._refs[key] = x, ref.numpy()
    return self._refs[key]
