"""VGG16 transfer learning, 4 classes (docs/REFERENCE_STUDY.md §2.4, VGG16_4_class).

Needs the ported ImageNet weights (see configs/vgg16_2.py), then:
  python -m mammo_jax.main --config=configs/vgg16_4.py:pipeline --workdir=runs/vgg16_4 \
      --config.data.manual_dir=/data/CBIS-DDSM
`pipeline` (the default) runs fe_fc128 -> ft1 -> ft2 -> ft3 in WORKDIR/<stage>, reusing
finished stages; one stage alone: --config=configs/vgg16_4.py:fe_fc256.

Stages, with the study's trainable parameters (its published accuracies, on 336 real test
patches, are config.published):
  fe_fc128  FC128, dropout 0.5, augmentation C, 150 epochs         1,049,220
  fe_fc256  FC256, dropout 0.5, augmentation C, 150 epochs         2,098,436
  ft1       fe_fc128's best + block5_conv3, RMSprop 1e-4           3,409,028
  ft2       ft1's best + block5_conv2, RMSprop 1e-4                5,768,836
  ft3       ft2's best + block5_conv1, RMSprop 1e-5                8,128,644
All stages use augmentation C; FE uses RMSprop 1e-3 (Keras default, no decay), patience 30;
FT 200 epochs, patience 30. The study's test numbers suffer from defect D1 (test-time
preprocessing differed from training), so they are not exactly comparable.
"""

from mammo_jax.config_lib import base
from mammo_jax.config_lib import vgg16

_FE = {'num_epochs': 150, 'patience': 30, 'augment': base.augmentation('C')}
STAGES = {
    'fe_fc128': {**_FE, 'model': {'fc': 128}},
    'fe_fc256': _FE,
    'ft1': vgg16.fine_tune(('block5_conv3',), 1e-4, start='fe_fc128', fc=128),
    'ft2': vgg16.fine_tune(('block5_conv2', 'block5_conv3'), 1e-4, start='ft1', fc=128),
    'ft3': vgg16.fine_tune(('block5_conv1', 'block5_conv2', 'block5_conv3'), 1e-5,
                           start='ft2', fc=128),
}
CHAIN = ('fe_fc128', 'ft1', 'ft2', 'ft3')
# Validation and test accuracy (%) per stage.
PUBLISHED = {
    'fe_fc128': (61.68, 56.85), 'fe_fc256': (58.69, 57.74), 'ft1': (66.92, 56.85),
    'ft2': (67.29, 60.42), 'ft3': (69.53, 59.23),
}


def get_config(arg: str | None = None):
  return vgg16.get_config(arg, STAGES, CHAIN, 'pipeline', 'four_class', 'configs/vgg16_4.py',
                          {s: base.published(*p) for s, p in PUBLISHED.items()})
