"""The tasks: label maps and losses, each derived from the label of one dataset config.

The study's three tasks derive from the 4-class label of cbis_ddsm/roi150: labels 0..3 are
BENIGN_MASS, MALIGNANT_MASS, BENIGN_CALCIFICATION, MALIGNANT_CALCIFICATION
(docs/REFERENCE_STUDY.md §1.4). `five_class` is Shen et al.'s patch task (docs/SHEN_2019.md) on
cbis_ddsm/s10_224, whose five labels put BACKGROUND first, then those four. `whole_image` is
Shen et al.'s image task on the whole-image configs (cbis_ddsm/whole_1152x896, whole_288x224:
BENIGN or MALIGNANT per breast view), a 2-way softmax as in their code. Binary tasks use one
logit and sigmoid cross-entropy, the others softmax cross-entropy, as the Keras models did (on
logits here, for stability).
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import optax

ROI150 = 'cbis_ddsm/roi150'
S10 = 'cbis_ddsm/s10_224'
FOUR_LABELS = ('BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION', 'MALIGNANT_CALCIFICATION')
FIVE_LABELS = ('BACKGROUND',) + FOUR_LABELS
WHOLE = 'cbis_ddsm/whole_1152x896'
IMAGE_LABELS = ('BENIGN', 'MALIGNANT')
CLASS_BALANCE = ('none', 'batch')  # config.class_balance: 'batch' uses balance_weights


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  class_names: tuple[str, ...]
  num_outputs: int  # 1: a sigmoid logit; k: softmax over k classes
  target: Callable[[jnp.ndarray], jnp.ndarray]  # dataset label -> task label
  dataset: str = ROI150  # the TFDS name/config whose labels `target` reads
  dataset_labels: tuple[str, ...] = FOUR_LABELS  # that dataset's label names, in order

  def loss(self, logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-example loss (no reduction), so callers can mask padded examples."""
    y = self.target(labels)
    if self.num_outputs == 1:
      return optax.sigmoid_binary_cross_entropy(logits[..., 0], y.astype(logits.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  def probabilities(self, logits: jnp.ndarray) -> jnp.ndarray:
    """[N, num_classes] class probabilities (two columns for binary tasks)."""
    if self.num_outputs == 1:
      p = jax.nn.sigmoid(logits[..., 0])
      return jnp.stack([1 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  def check_dataset(self, data_name: str) -> None:
    """Refuses data.name when it is another known dataset config than this task's."""
    name = data_name.partition(':')[0]  # without a ':1.0.0' version
    known = {t.dataset for t in TASKS.values()}
    if name in known and name != self.dataset:
      raise ValueError(f'config.task={self.name!r} reads the labels of {self.dataset}, not of '
                       f'{name}; set --config.data.name={self.dataset} (or another task)')

  def check_labels(self, label_names: Sequence[str], data_name: str) -> None:
    """Refuses a dataset (any builder) whose labels are not the ones `target` reads."""
    if tuple(label_names) != self.dataset_labels:
      raise ValueError(f'config.task={self.name!r} reads the labels {self.dataset_labels} '
                       f'(as {self.dataset}), but {data_name} has {tuple(label_names)}; set '
                       f'--config.data.name={self.dataset} (or another task)')


def balance_weights(y: jnp.ndarray, num_classes: int, axis_name: str | None = None
                    ) -> jnp.ndarray:
  """Per-example loss weights 1 / (share of the example's class in the global batch).

  Shen et al.'s automatic batch balancing (docs/SHEN_2019.md): the weighted mean loss is
  the sum over the classes present of each class's mean loss. Under pmap, pass the batch axis
  name: shares are counted over the whole global batch, so the update does not depend on the
  device count.
  """
  counts = jnp.sum(jax.nn.one_hot(y, num_classes), axis=0)
  if axis_name is not None:
    counts = lax.psum(counts, axis_name)
  return jnp.sum(counts) / counts[y]


def _identity(y):
  return y.astype(jnp.int32)


TASKS = {
    'mass_vs_calc': Task('mass_vs_calc', ('MASS', 'CALCIFICATION'), 1,
                         lambda y: (y >= 2).astype(jnp.int32)),
    'four_class': Task('four_class', FOUR_LABELS, 4, _identity),
    'benign_vs_malignant': Task('benign_vs_malignant', ('BENIGN', 'MALIGNANT'), 1,
                                lambda y: (y % 2).astype(jnp.int32)),
    'five_class': Task('five_class', FIVE_LABELS, 5, _identity, dataset=S10,
                       dataset_labels=FIVE_LABELS),
    'whole_image': Task('whole_image', IMAGE_LABELS, 2, _identity, dataset=WHOLE,
                        dataset_labels=IMAGE_LABELS),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(sorted(TASKS))}')
  return TASKS[name]
