"""The composite 4-class model (docs/REFERENCE_STUDY.md §2.8): a type model x a severity model.

Command (the argument picks the members; `demo`, the default, is sized for a CPU):
  python -m mammo_jax.main --config=configs/composite4.py --workdir=runs/composite4_demo
  python -m mammo_jax.main --config=configs/composite4.py:study --workdir=runs/composite4 \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/composite4.py:smoke --workdir=/tmp/composite_smoke
Members: `type`, mass vs calcification (the study's VGG16 2-class fine-tuned on 2 layers,
configs/vgg16_2.py:pipeline), and `severity`, benign vs malignant (scratch run 3,
configs/benmal.py:run3). Nothing is learned in the combination: `threshold` cuts each model at
0.5 and maps (type, severity) to 2 x type + severity (0 benign mass, 1 malignant mass,
2 benign calcification, 3 malignant calcification), as the study did; `product` multiplies the
two models' probabilities into four (same predictions, plus 4-class scores for ROC and AUC).

The study's published numbers (336 real test patches): the composite's in config.published
(the best 4-class number of its report), the members' in their config files.

`demo` (demo-only settings, not the study's): the VGG16 without ImageNet weights
(model.pretrained='': none on CI) for fe_hardaug then ft2, and the severity model for a few
epochs with model.preprocess='torch' (standardised patches; see configs/ensemble4.py) and
Adam without decay.
"""

from mammo_jax.config_lib import ensembles

MEMBERS = {'type': 'configs/vgg16_2.py:pipeline', 'severity': 'configs/benmal.py:run3'}
METHODS = ('threshold:type+severity', 'product:type+severity')
PUBLISHED = {'threshold:type+severity': {'test_accuracy': 62.50, 'note': ''}}
DEMO_SHAPE = {
    'type': "model.pretrained='' pipeline=fe_hardaug,ft2 stages.ft2.init_from=@fe_hardaug"}
DEMO_TRAINING = {
    'type': 'batch_size=16 eval_batch_size=16 stages.fe_hardaug.num_epochs=2 '
            'stages.ft2.num_epochs=1',
    'severity': 'model.preprocess=torch optimizer.name=adam optimizer.decay=0.0 batch_size=16 '
                'eval_batch_size=16 num_epochs=6',
}


def get_config(arg: str | None = None):
  return ensembles.get_config(arg, MEMBERS, METHODS, DEMO_SHAPE, DEMO_TRAINING, __file__,
                              PUBLISHED)
