"""mammo_jax: abnormality classification in mammograms (CBIS-DDSM) with JAX and Flax."""

__version__ = '0.1.0'
