"""The fields every mammo_jax experiment shares, the smoke size and config-argument parsing.

Experiment configs start from `base_config()` and set what differs. Fields added after runs
were first written stay out of the config fingerprint (resumption and ensemble member hashes;
mammo_jax.workdir.ADDED_FIELDS): `published`, the study's published numbers where a config
has them, `model.dont_load`, `evaluator`, `evaluation` and `divergence_factor`; `class_balance`,
`data.image_size`, `grad_accum_steps` and `checkpoint_metric` only at their defaults.
"""

import ml_collections

# The study's Keras ImageDataGenerator settings (docs/REFERENCE_STUDY.md §1.7), as config values;
# mammo_jax.augment.STUDY_SETTINGS is built from them. B differs from A only in its
# preprocessing function, which is not part of the augmentation.
_FLIPS = {'horizontal_flip': True, 'vertical_flip': True, 'fill_mode': 'reflect'}
_NO_SHIFT = {'width_shift': 0.0, 'height_shift': 0.0}
STUDY_AUGMENT = {
    'A': {'rotation': 180.0, 'shear': 10.0, 'zoom': 0.2, **_NO_SHIFT, **_FLIPS},
    'B': {'rotation': 180.0, 'shear': 10.0, 'zoom': 0.2, **_NO_SHIFT, **_FLIPS},
    'C': {'rotation': 180.0, 'shear': 15.0, 'zoom': 0.2, 'width_shift': 0.2,
          'height_shift': 0.2, **_FLIPS},
    'D': {'rotation': 180.0, 'shear': 15.0, 'zoom': 0.2, **_NO_SHIFT, **_FLIPS},
    'E': {'rotation': 180.0, 'shear': 0.0, 'zoom': 0.2, **_NO_SHIFT, **_FLIPS},
}


def augmentation(setting: str) -> dict:
  """The study's augmentation setting A-E as the values of config.augment."""
  return dict(STUDY_AUGMENT[setting])


def evaluation() -> ml_collections.ConfigDict:
  """config.evaluation: what the final evaluation adds to the metrics (mammo_jax.bootstrap,
  mammo_jax.calibration): patient-bootstrap 95 % intervals from ci_resamples resamples drawn
  with ci_seed (ensembles: for each method), and, when temperature_scaling is set, calibrated
  numbers (a temperature fitted on validation only) beside the uncalibrated ones; with flip_tta,
  `auc_flip_tta`: the AUC of the mean probabilities of each image and its horizontal mirror
  (whole mammograms), with its interval; with localisation (whole-image runs), the per-image
  AUC and pointing game of mammo_jax.localisation on the test split, with test heatmaps. Not
  part of the fingerprint."""
  return ml_collections.ConfigDict(
      {'ci_resamples': 2000, 'ci_seed': 0, 'temperature_scaling': False, 'flip_tta': False,
       'localisation': False})


def base_config() -> ml_collections.ConfigDict:
  """The shared fields, with the study's Exp 5 (its best 2-class scratch CNN) settings."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # init, epoch order, augmentation and dropout all derive from it
  config.task = 'mass_vs_calc'  # mass_vs_calc | four_class | benign_vs_malignant

  config.model = model = ml_collections.ConfigDict()
  model.name = 'scratch2_exp5'  # a key of mammo_jax.models.REGISTRY
  model.preprocess = 'unit'  # uint16 / 65535, the study's scaling for scratch models
  # Convolution and max-pool implementation: 'xla' (nn.Conv / nn.max_pool), 'cpu_fast' (same
  # parameters and values, gradients in forms XLA:CPU runs faster; mammo_jax.models.layers),
  # or 'auto' (cpu_fast on CPU, xla on GPU/TPU).
  model.conv_impl = 'auto'
  # 'all', or comma-separated layer paths to train, the rest frozen (Keras's trainable=False):
  # e.g. 'fc,logits,vgg16/block5_conv3'. Frozen parameters get no gradient and no optimizer state.
  model.trainable = 'all'
  # VGG16 and ResNet50: ImageNet weights for the base, a file ported by `python -m
  # mammo_jax.port_weights` (or an original Keras .h5 / torchvision .pth), or 'keras_notop'
  # (also 'keras', 'torchvision') to download the official file (needs internet); '' =
  # random initialisation.
  model.pretrained = ''
  # A regex of weight-file entries (slash-separated paths) the weights loader does not load
  # from model.pretrained, e.g. an ImageNet top; '' = none. Not part of the fingerprint.
  model.dont_load = ''
  # Start from the best checkpoint of another run: a workdir, or '@STAGE' for the sibling
  # workdir STAGE (how pipeline stages chain). Parameters and batch statistics; the optimizer
  # starts afresh. Takes precedence over model.pretrained.
  config.init_from = ''
  # How predictions become metrics: a key of mammo_jax.evaluators.EVALUATORS.
  config.evaluator = 'classification'
  config.evaluation = evaluation()
  config.half_precision = False  # bfloat16 convolutions (GPU/TPU); params and loss in float32

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'rmsprop'  # rmsprop | adam | nadam | sgd, with Keras's defaults and semantics
  opt.learning_rate = 1e-3
  opt.decay = 1e-3  # Keras time-based decay per update: lr / (1 + decay * step)
  opt.momentum = 0.0  # sgd only
  config.l2 = 0.0  # Keras l2(c) on every kernel: c * sum(w^2) added to the loss
  # 'none', or 'batch': each training example's loss weighted by 1 / its class's share of the
  # batch (Shen et al.'s automatic batch balancing); validation losses stay unweighted.
  config.class_balance = 'none'

  # Training batches only: rotation and shear in degrees, zoom and shifts as fractions
  # (mammo_jax.augment.AugmentSpec); the study's setting A.
  config.augment = ml_collections.ConfigDict(augmentation('A'))

  config.batch_size = 128  # global, split over local devices
  # > 1: each device's batch in this many micro-batches, gradients averaged into one update
  # (mammo_jax.accumulation: BatchNorm sees micro-batches).
  config.grad_accum_steps = 1
  config.eval_batch_size = 128  # the last batch is padded and masked
  config.num_epochs = 500  # an epoch is one pass over the training split
  config.num_train_steps = -1  # > 0 caps the run
  config.patience = 80  # epochs without validation improvement; 0 = no early stopping
  # What picks the best checkpoint and counts towards patience: the lowest validation 'loss'
  # or the highest validation 'auc'.
  config.checkpoint_metric = 'loss'
  # A step's training loss above this many times its early level (mammo_jax.train.EARLY_STEPS)
  # stops the run as a non-finite one does; 0 = only NaN/inf stops it. 100: the study's
  # configs peak at 32x (smoke runs at batch 4, RMSprop's first update; 2.4x at batch 32 on the
  # learnable synthetic data), while a negative learning rate passed 662 (950x) and RMSprop at
  # lr 1e3 8e6. Not part of the fingerprint (workdir.ADDED_FIELDS).
  config.divergence_factor = 100.0
  config.log_every_steps = 20
  config.checkpoint_every_steps = 0  # latest checkpoint cadence; 0 = at every epoch end

  config.data = data = ml_collections.ConfigDict()
  data.name = 'cbis_ddsm/roi150'  # TFDS name/config of the patch dataset
  # 'image': the abnormality patch; 'image+baseline': it and its healthy baseline patch as two
  # channels, for the pair models (dual, siamese), leaving out examples without a baseline.
  data.inputs = 'image'
  # > 0: every split's patches resized (area averaging) to image_size x image_size once, on
  # loading; 0 = as stored.
  data.image_size = 0
  data.manual_dir = ''  # a CBIS-DDSM download (either NBIA layout); '' = synthetic data
  data.data_dir = ''  # where real builds live: a path or gs:// bucket; '' = TFDS default
  data.cache_dir = ''  # synthetic trees and builds; '' = $MAMMO_JAX_CACHE or ~/.cache/mammo_jax
  data.num_workers = 0  # build processes; 0 = all cores
  # Which patients are train, validation and test (tfds_cbis.splits): 'official', 'tfds' or
  # 'kfoldK' (e.g. kfold5, with data.fold in 0..K-1 the test fold). Applied when loading, so
  # switching never rebuilds. Part of a run's identity unless default (workdir.DEFAULT_FIELDS).
  data.protocol = 'official'
  data.fold = 0

  data.synthetic = synthetic = ml_collections.ConfigDict()
  synthetic.patients = 160
  synthetic.seed = 0
  synthetic.difficulty = 0.5
  synthetic.layout = 'nbia'
  synthetic.height = 1024
  synthetic.width = 640
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  """A tiny, fast run of the same code paths (used by the tests and CI)."""
  config.data.synthetic.patients = 12
  config.data.synthetic.height, config.data.synthetic.width = 256, 160
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_epochs = 2
  config.patience = 0
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2


def parse_args(arg: str | None, variants: tuple[str, ...], default: str,
               config_file: str) -> tuple[str, bool]:
  """'VARIANT', 'smoke', 'VARIANT,smoke' or '' -> (variant, smoke)."""
  parts = [p for p in (arg or '').split(',') if p]
  smoke_run = 'smoke' in parts
  rest = [p for p in parts if p != 'smoke']
  if len(rest) > 1 or (rest and rest[0] not in variants):
    raise ValueError(f'{config_file} takes one of {", ".join(variants)} (default {default}), '
                     f'optionally with ",smoke"; got {arg!r}')
  return (rest[0] if rest else default), smoke_run


def parse_smoke_arg(arg: str | None, config_file: str) -> bool:
  """The argument of a config file without variants: none (False) or 'smoke' (True)."""
  if arg not in (None, '', 'smoke'):
    raise ValueError(f'{config_file} takes no argument or "smoke", got {arg!r}')
  return arg == 'smoke'


def published(validation_accuracy: float | None, test_accuracy: float | None,
              test_auc: float | None = None) -> dict:
  """One model's published numbers, the value of config.published: accuracies in percent,
  AUC in [0, 1]; None where the study did not publish the number."""
  return {'validation_accuracy': validation_accuracy, 'test_accuracy': test_accuracy,
          'test_auc': test_auc}
