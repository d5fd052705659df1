"""ResNet50 feature extraction, mass vs calcification (docs/REFERENCE_STUDY.md §2.5, §5.1).

Needs the ImageNet weights, ported once (Keras publishes them):
  wget https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
  python -m mammo_jax.port_weights resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      weights/resnet50_keras_notop.msgpack
Then (the argument picks the variant; `fe_dropout` is the default):
  python -m mammo_jax.main --config=configs/resnet50_2.py:fe --workdir=runs/resnet50_2/fe \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/resnet50_2.py:fe,smoke --workdir=/tmp/resnet_smoke
With internet (Colab), --config.model.pretrained=keras_notop downloads, verifies and caches
the file.

Variants (the report's test accuracies on 336 patches, its best epochs 12 and 36):
  fe          one sigmoid unit on the 2,048 pooled features, 2,049 trainable   74.40 %
  fe_dropout  + dropout 0.5 before it                                          76.19 %
Assumed where the report is silent (config_lib/resnet50.py): the base frozen with its
BatchNorm in inference mode, 150x150 inputs (not resized to 224), Keras caffe preprocessing,
RMSprop 1e-3 without decay, batch 128, augmentation B, 200 epochs, patience 30 (the study's
VGG16 feature-extraction settings).
"""

from mammo_jax.config_lib import base
from mammo_jax.config_lib import resnet50
from mammo_jax.config_lib import stages as stages_lib

STAGES = {'fe': {}, 'fe_dropout': {'model': {'dropout': 0.5}}}
# Validation and test accuracy (%) per variant.
PUBLISHED = {'fe': (72.15, 74.40), 'fe_dropout': (75.14, 76.19)}


def get_config(arg: str | None = None):
  variant, smoke = base.parse_args(arg, tuple(STAGES), 'fe_dropout', 'configs/resnet50_2.py')
  config = resnet50.base_config('mass_vs_calc')
  if smoke:
    resnet50.smoke(config)
  return stages_lib.stage_config(config, STAGES[variant], base.published(*PUBLISHED[variant]))
