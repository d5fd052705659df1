"""Light helpers for the config files in configs/: ml_collections and the standard library only.

Loading any config file must not import JAX, Flax, optax or TensorFlow, so the config files
import only this package (tests/mammo_jax/test_config_lib.py checks it):
  base       the fields every experiment shares, `smoke`, argument parsing, the study's
             augmentation settings;
  overrides  setting fields by dotted path, from nested dicts or shell words (one rule);
  loader     'path.py:arg' -> ConfigDict, relative paths against a project root;
  stages     multi-stage (pipeline) configs; mammo_jax.pipeline runs them;
  ensembles  ensemble configs and their members' resolved configs; mammo_jax.ensemble runs them;
  pairs, vgg16, mobilenet  the Dual/Siamese, VGG16 and MobileNet experiment families;
  whole      Shen et al.'s whole-image classifier (configs/whole.py).
"""
