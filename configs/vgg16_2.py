"""VGG16 transfer learning, mass vs calcification (docs/REFERENCE_STUDY.md §2.4, VGG16_2_class).

Needs the ImageNet weights, ported once (the files are published by Keras and torchvision):
  wget https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  python -m mammo_jax.port_vgg16 vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      weights/vgg16_keras_notop.msgpack
Then (the argument picks a stage; `pipeline`, the default, runs fe_hardaug -> ft1 -> ft2 in
WORKDIR/<stage>, reusing finished stages):
  python -m mammo_jax.main --config=configs/vgg16_2.py:pipeline --workdir=runs/vgg16_2 \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/vgg16_2.py:fe_dropout --workdir=runs/vgg16_2/fe_dropout
  python -m mammo_jax.main --config=configs/vgg16_2.py:pipeline,smoke --workdir=/tmp/vgg_smoke
With internet (Colab), --config.model.pretrained=keras_notop downloads, verifies and caches
the file.

Stages, with the study's trainable parameters (its published accuracies, on 336 real test
patches, are config.published):
  fe          FC256, no dropout, augmentation B                    2,097,665
  fe_dropout  + dropout 0.5 before the FC layer                    2,097,665
  fe_fc128    + dropout, FC128, patience 20                        1,048,833
  fe_hardaug  + dropout, FC256, augmentation C                     2,097,665
  ft1         fe_hardaug's best + block5_conv3, RMSprop 1e-4       4,457,473
  ft2         ft1's best + block5_conv2, RMSprop 1e-4              6,817,281
The study's test numbers were measured with a different test-time preprocessing (defect D1),
so they are not exactly comparable. FE: RMSprop 1e-3 (Keras default, no decay), batch 128,
200 epochs, patience 30; FT: 200 epochs, patience 30. A single ft stage starts from its
sibling workdir (init_from='@fe_hardaug'); point --config.init_from elsewhere if needed.
"""

from mammo_jax.config_lib import base
from mammo_jax.config_lib import vgg16

_FE = {'num_epochs': 200, 'patience': 30, 'augment': base.augmentation('B')}
STAGES = {
    'fe': {**_FE, 'model': {'dropout': 0.0}},
    'fe_dropout': _FE,
    'fe_fc128': {**_FE, 'model': {'fc': 128}, 'patience': 20},
    'fe_hardaug': {**_FE, 'augment': base.augmentation('C')},
    'ft1': vgg16.fine_tune(('block5_conv3',), 1e-4, start='fe_hardaug', fc=256),
    'ft2': vgg16.fine_tune(('block5_conv2', 'block5_conv3'), 1e-4, start='ft1', fc=256),
}
CHAIN = ('fe_hardaug', 'ft1', 'ft2')
# Validation and test accuracy (%) per stage.
PUBLISHED = {
    'fe': (86.54, 86.90), 'fe_dropout': (87.10, 87.50), 'fe_fc128': (87.48, 86.61),
    'fe_hardaug': (87.48, 85.71), 'ft1': (89.72, 89.58), 'ft2': (91.03, 91.37),
}


def get_config(arg: str | None = None):
  return vgg16.get_config(arg, STAGES, CHAIN, 'pipeline', 'mass_vs_calc', 'configs/vgg16_2.py',
                          {s: base.published(*p) for s, p in PUBLISHED.items()})
