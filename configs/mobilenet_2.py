"""MobileNet feature extraction, mass vs calcification (docs/REFERENCE_STUDY.md §2.5, §5.1).

Needs Keras's ImageNet MobileNet (alpha 0.5, 160x160, no top), ported once:
  wget https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_5_0_160_tf_no_top.h5
  python -m mammo_jax.port_weights mobilenet_5_0_160_tf_no_top.h5 \
      weights/mobilenet_5_0_160_keras_notop.msgpack
Then (the argument picks a variant; `fe` is the default):
  python -m mammo_jax.main --config=configs/mobilenet_2.py:fe_dropout \
      --workdir=runs/mobilenet_2/fe_dropout --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/mobilenet_2.py:fe,smoke --workdir=/tmp/mn_smoke
With internet (Colab), --config.model.pretrained=keras_5_0_160_notop downloads and caches
the file (Keras publishes no digest for it; the port records its SHA-256).

Variants, each with the base frozen (BatchNorm in inference mode) and the study's test
accuracy on its 336 real test patches (config.published):
  fe          global average pool -> one sigmoid unit                     70.24 %
  fe_dropout  + dropout 0.5 before the output unit                        76.19 %
  fe_fc8      + Dense(8, relu) before the output unit (also trained)      72.62 %
Inputs: the 150x150 patches resized (bilinear, inside the model) to 160x160, grey repeated
to 3 channels, MobileNet's preprocessing x / 127.5 - 1 on 0..255.

Where the study is silent (it published no MobileNet code), these are assumptions:
- the resizing method (bilinear);
- the optimizer: RMSprop at Keras's defaults (1e-3, no decay), batch 128, as in the study's
  VGG16 feature extraction, the one transfer experiment it published code for;
- epochs: at most 200 with patience 30, as for VGG16 feature extraction; the study's best
  epochs (29, 23, 28) fit inside that;
- augmentation: setting B, as for VGG16 feature extraction.
"""

from mammo_jax.config_lib import base
from mammo_jax.config_lib import mobilenet

TRAINING = {'num_epochs': 200, 'patience': 30,  # batch 128: base_config's
            'optimizer': {'name': 'rmsprop', 'learning_rate': 1e-3, 'decay': 0.0},
            'augment': base.augmentation('B')}
VARIANTS = {
    'fe': {},
    'fe_dropout': {'model': {'dropout': 0.5}},
    'fe_fc8': {'model': {'fc': 8, 'trainable': 'fc,logits'}},
}
# Validation and test accuracy (%) per variant.
PUBLISHED = {'fe': (68.41, 70.24), 'fe_dropout': (72.71, 76.19), 'fe_fc8': (73.08, 72.62)}


def get_config(arg: str | None = None):
  return mobilenet.get_config(arg, VARIANTS, 'fe', 'mass_vs_calc', 'configs/mobilenet_2.py',
                              {v: base.published(*p) for v, p in PUBLISHED.items()}, TRAINING)
