"""Ensembles of mass-vs-calcification models (docs/REFERENCE_STUDY.md §2.9): M5, M6, M9 and VGG16.

Command (the argument picks the members; `demo`, the default, is sized for a CPU):
  python -m mammo_jax.main --config=configs/ensemble2.py --workdir=runs/ensemble2_demo
  python -m mammo_jax.main --config=configs/ensemble2.py:study --workdir=runs/ensemble2 \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/ensemble2.py:smoke --workdir=/tmp/ensemble2_smoke
Members train in WORKDIR/members/NAME-HASH (finished ones are reused); the run ends with the
path of WORKDIR/report.html. Fields: see configs/ensemble4.py and mammo_jax/ensemble.py.

The study's published numbers (336 real test patches): the methods' in config.published, the
members' in their config files. Its ensemble 1 is M5, M6, M9; ensemble 2 adds the VGG16 listed
twice (the study's "weight 2", so five voters and no ties). The study's averaging counted an
example right when |mean - label| < 0.5; here it is the argmax of the mean probabilities (a mean
of exactly 0.5 predicts mass).

`demo` (demo-only settings, not the study's): the same members trained briefly on the
synthetic data with batch 16: M5, M6, M9 for 4 epochs with model.preprocess='torch'
(standardised patches; see configs/ensemble4.py) and Adam without decay; the VGG16 runs two
stages, fe_hardaug then ft2 (skipping ft1), WITHOUT ImageNet weights (model.pretrained='':
none on CI).
"""

from mammo_jax.config_lib import ensembles

MEMBERS = {'m5': 'configs/scratch2.py:exp5', 'm6': 'configs/scratch2.py:exp6',
           'm9': 'configs/scratch2.py:exp9', 'vgg': 'configs/vgg16_2.py:pipeline'}
METHODS = ('vote:m5+m6+m9', 'average:m5+m6+m9', 'vote:m5+m6+m9+vgg+vgg',
           'average:m5+m6+m9+vgg+vgg')
PUBLISHED = {  # test accuracy (%) per method
    'vote:m5+m6+m9': 89.58, 'average:m5+m6+m9': 88.99, 'vote:m5+m6+m9+vgg+vgg': 91.07,
    'average:m5+m6+m9+vgg+vgg': 91.07,
}
_SCRATCH = ("model.preprocess=torch optimizer.name=adam optimizer.decay=0.0 batch_size=16 "
            "eval_batch_size=16 patience=0 num_epochs=4")
DEMO_SHAPE = {
    'vgg': "model.pretrained='' pipeline=fe_hardaug,ft2 stages.ft2.init_from=@fe_hardaug"}
DEMO_TRAINING = {
    'm5': _SCRATCH, 'm6': _SCRATCH, 'm9': _SCRATCH,
    'vgg': 'batch_size=16 eval_batch_size=16 stages.fe_hardaug.num_epochs=2 '
           'stages.ft2.num_epochs=1',
}


def get_config(arg: str | None = None):
  return ensembles.get_config(
      arg, MEMBERS, METHODS, DEMO_SHAPE, DEMO_TRAINING, __file__,
      {m: {'test_accuracy': acc, 'note': ''} for m, acc in PUBLISHED.items()})
