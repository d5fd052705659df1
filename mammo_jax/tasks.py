"""The study's three tasks, derived from the 4-class label of cbis_ddsm/roi150.

Labels 0..3 are BENIGN_MASS, MALIGNANT_MASS, BENIGN_CALCIFICATION, MALIGNANT_CALCIFICATION
(docs/REFERENCE_STUDY.md §1.4). Binary tasks use one logit and sigmoid cross-entropy, 4-class
softmax cross-entropy, as the study's Keras models did (on logits here, for stability).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  class_names: tuple[str, ...]
  num_outputs: int  # 1: a sigmoid logit; k: softmax over k classes
  target: Callable[[jnp.ndarray], jnp.ndarray]  # 4-class label -> task label

  def loss(self, logits: jnp.ndarray, labels4: jnp.ndarray) -> jnp.ndarray:
    """Per-example loss (no reduction), so callers can mask padded examples."""
    y = self.target(labels4)
    if self.num_outputs == 1:
      return optax.sigmoid_binary_cross_entropy(logits[..., 0], y.astype(logits.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  def probabilities(self, logits: jnp.ndarray) -> jnp.ndarray:
    """[N, num_classes] class probabilities (two columns for binary tasks)."""
    if self.num_outputs == 1:
      p = jax.nn.sigmoid(logits[..., 0])
      return jnp.stack([1 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


TASKS = {
    'mass_vs_calc': Task('mass_vs_calc', ('MASS', 'CALCIFICATION'), 1,
                         lambda y: (y >= 2).astype(jnp.int32)),
    'four_class': Task('four_class', ('BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION',
                                      'MALIGNANT_CALCIFICATION'), 4,
                       lambda y: y.astype(jnp.int32)),
    'benign_vs_malignant': Task('benign_vs_malignant', ('BENIGN', 'MALIGNANT'), 1,
                                lambda y: (y % 2).astype(jnp.int32)),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(sorted(TASKS))}')
  return TASKS[name]
