"""Heatmaps of whole mammograms: the S10 patch classifier as a sliding window, computed in one
convolutional pass; the whole-image model's class-activation maps; PNGs over the mammogram.

Sliding window (`patch_logit_map`). A patch classifier here is a backbone of output stride
STRIDE (32: ResNet50, VGG16), global average pooling and a dense head. Run over a whole image,
the backbone gives a feature map whose cell (i, j) sits at pixel (STRIDE i, STRIDE j); an average
over `window / STRIDE` cells followed by the head, applied at every cell ('valid', stride 1), is
the classifier on the window of `window` pixels with top-left corner (STRIDE i, STRIDE j): Shen's
224-px sliding window at a stride of 32 px, with no loop over windows. For a 224-px window, a
7x7 average of the feature map.

When it equals cropping the window and classifying the crop: the head is identical, so the two
agree exactly when the backbone's features of the window's cells are the crop's. The backbone
pads every convolution of the crop with zeros at the crop's border, where the whole image has
the activations of the neighbouring tissue. So they are equal (to float rounding) when the
window is the whole image, or when no activation of either can differ at the border: e.g. a
backbone with zero biases on an input that is zero everywhere except inside the window, at
least the receptive-field radius (VGG16: 106 px) from its border (tested, with the counter-case
of a window where that distance is 48 px). On real images the cells near a window's border see
beyond it, so the map is the classifier on each window with its surroundings as context rather
than zero padding: close to cropping, not the same numbers. Shen's whole-image network builds on
exactly this fully convolutional form.

Class-activation maps (`class_activation_maps`): a whole-image model's `__call__(x, train=False,
cam=True)` returns (logits, cam) with cam [N, h, w, K] whose mean over (h, w) is the logits.

Every map carries where its cells lie in the image it was computed on (`Grid`), which is what the
pointing game (mammo_jax.localisation) and the PNGs use.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax.numpy as jnp
from matplotlib import colors as mpl_colors
import numpy as np

from mammo_jax import plots
from mammo_jax.models import layers
from mammo_jax.models.resnet import ResNet50, ResNet50Classifier
from mammo_jax.models.vgg16 import VGG16, VGG16Classifier

STRIDE = 32  # output stride of the ResNet50 and VGG16 backbones


@dataclasses.dataclass(frozen=True)
class Grid:
  """Where a map's cells lie in its image: the centre of cell (i, j) is pixel
  (offset + step i, offset + step j); each cell stands for a step x step square."""

  step: float
  offset: float

  def centre(self, i: int, j: int) -> tuple[float, float]:
    return self.offset + self.step * i, self.offset + self.step * j

  def extent(self, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """matplotlib's (left, right, bottom, top) of a map of `shape` cells."""
    half = self.step / 2
    top, left = self.offset - half, self.offset - half
    return (left, left + self.step * shape[1], top + self.step * shape[0], top)


def window_grid(window: int) -> Grid:
  """The sliding window's grid: cell (i, j) is the window at (STRIDE i, STRIDE j)."""
  return Grid(step=float(STRIDE), offset=window / 2)


def cam_grid(image_shape: tuple[int, int], map_shape: tuple[int, int]) -> Grid:
  """A class-activation map's grid: its cells tile the image (same step both ways)."""
  step = image_shape[0] / map_shape[0]
  return Grid(step=step, offset=step / 2)


def _backbone(model: nn.Module) -> tuple[str, nn.Module]:
  """(the classifier's backbone submodule name, that backbone alone)."""
  if isinstance(model, ResNet50Classifier):
    return 'resnet50', ResNet50(variant=model.variant, dtype=model.dtype)
  if isinstance(model, VGG16Classifier):
    if model.pooling != 'avg':
      raise ValueError("a sliding-window heatmap needs the patch classifier's global average "
                       f"pooling (model.pooling='avg', Shen's), not {model.pooling!r}")
    return 'vgg16', VGG16(include_top=False, conv_impl=model.conv_impl, dtype=model.dtype)
  raise ValueError(f'sliding-window heatmaps need a ResNet50 or VGG16 patch classifier (the S10 '
                   f'models), not {type(model).__name__}')


class _Head(nn.Module):
  """The classifier's own head (layers.transfer_head, inference mode) on pooled features."""

  num_outputs: int
  fc: int

  @nn.compact
  def __call__(self, x):
    return layers.transfer_head(x, self.num_outputs, self.fc, 0.0, train=False)


def patch_logit_map(model: nn.Module, variables: dict, images: jnp.ndarray,
                    window: int) -> jnp.ndarray:
  """The patch classifier's logits for every window of `window` px at a stride of STRIDE px.

  Args:
    model: a ResNet50Classifier or VGG16Classifier (pooling 'avg') trained on patches.
    variables: its variables ({'params', 'batch_stats'?}).
    images: [N, H, W, 3] preprocessed whole images (preprocessing.preprocess).
    window: the patch size the classifier was trained on, a multiple of STRIDE.

  Returns:
    [N, h - window / STRIDE + 1, w - window / STRIDE + 1, num_outputs] float32 logits, where
    (h, w) is the backbone's map (H / STRIDE, W / STRIDE for multiples of STRIDE); cell (i, j)
    is the window with top-left corner (STRIDE i, STRIDE j).
  """
  if window % STRIDE:
    raise ValueError(f'the window ({window} px) must be a multiple of the backbone stride '
                     f'({STRIDE} px)')
  name, backbone = _backbone(model)
  sub = {c: v[name] for c, v in variables.items() if name in v}
  features = backbone.apply(sub, images, train=False).astype(jnp.float32)
  cells = window // STRIDE
  if min(features.shape[1:3]) < cells:
    raise ValueError(f'an image of {images.shape[1]}x{images.shape[2]} px is smaller than one '
                     f'window of {window} px')
  pooled = nn.avg_pool(features, (cells, cells), strides=(1, 1), padding='VALID')
  params = variables['params']
  head = {k: params[k] for k in ('fc', 'logits') if k in params}
  return _Head(model.num_outputs, model.fc).apply({'params': head}, pooled)


def class_activation_maps(model: nn.Module, variables: dict,
                          images: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(logits [N, K], cam [N, h, w, K]) of a whole-image model (the cam=True contract)."""
  return model.apply(variables, images, train=False, cam=True)


def malignant_classes(class_names) -> list[int]:
  """Indices of the classes that are malignant (MALIGNANT, MALIGNANT_MASS, ...)."""
  return [i for i, n in enumerate(class_names) if n.startswith('MALIGNANT')]


def malignant_map(probs: np.ndarray, class_names) -> np.ndarray:
  """[..., h, w] probability that a window is malignant: the sum of the malignant classes'."""
  index = malignant_classes(class_names)
  if not index:
    raise ValueError(f'the classes {tuple(class_names)} have no MALIGNANT one')
  return np.asarray(probs)[..., index].sum(-1)


def peak(values: np.ndarray, grid: Grid) -> tuple[float, float]:
  """The image pixel (y, x) at the centre of the map's largest cell (the first, on ties)."""
  i, j = np.unravel_index(int(np.argmax(values)), values.shape)
  return grid.centre(int(i), int(j))


def render(image: np.ndarray, values: np.ndarray, grid: Grid, out_path: str,
           title: str = '', label: str = 'P(malignant)', vmin: float | None = 0.0,
           vmax: float | None = 1.0) -> str:
  """A PNG of `values` (a [h, w] map on `grid`) over the grey `image`, with a colour bar and
  the maximum marked. vmin/vmax None: the map's own range (class-activation maps)."""
  image, values = np.asarray(image).squeeze(), np.asarray(values, np.float64)
  height, width = image.shape
  fig, (ax,) = plots._new_figure(6.0, 6.0 * height / width + 0.6)  # pylint: disable=protected-access
  ax.imshow(image, cmap='gray', interpolation='antialiased')
  norm = mpl_colors.Normalize(vmin=values.min() if vmin is None else vmin,
                              vmax=values.max() if vmax is None else vmax)
  shown = ax.imshow(values, cmap='jet', alpha=0.4, norm=norm, extent=grid.extent(values.shape),
                    interpolation='nearest')
  y, x = peak(values, grid)
  ax.plot([x], [y], marker='+', markersize=18, markeredgewidth=2, color='white')
  right = x > width / 2  # the label on the side with room
  ax.annotate(f'max {values.max():.3f}', (x, y), xytext=(-8 if right else 8, 8),
              textcoords='offset points', ha='right' if right else 'left', color='white',
              fontsize=9)
  ax.set_xlim(-0.5, width - 0.5)
  ax.set_ylim(height - 0.5, -0.5)
  ax.set_axis_off()
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
  return plots._save(fig, os.fspath(out_path), title)  # pylint: disable=protected-access
