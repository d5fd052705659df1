"""TEMP (replaced by the weights branch)."""
from mammo_jax.vgg16_weights import merge_params  # noqa: F401
