"""The config helper: config files load without JAX or TensorFlow, ensemble members resolve
from any current directory, overrides follow one rule, and the bookkeeping fields (published,
model.dont_load, divergence_factor) leave fingerprints and member hashes as they were."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from mammo_jax import augment, workdir
from mammo_jax.config_lib import base, ensembles, loader, overrides
from tests.conftest import ROOT, load_config

# Every config file and its arguments ('' = the default), each also with ',smoke'.
VARIANTS = {
    'default': [''], 'dual': [''], 'siamese': [''], 'benmal': ['run1', 'run2', 'run3'],
    'scratch2': [''] + [f'exp{i}' for i in range(12)], 'scratch4': ['', 'm1', 'm2', 'm3'],
    'lr_range': ['', 'sgd', 'rmsprop', 'adam', 'nadam', 'all'],
    'vgg16_2': ['', 'fe', 'fe_dropout', 'fe_fc128', 'fe_hardaug', 'ft1', 'ft2', 'pipeline'],
    'vgg16_4': ['', 'fe_fc128', 'fe_fc256', 'ft1', 'ft2', 'ft3', 'pipeline'],
    'resnet50_2': ['', 'fe', 'fe_dropout'],
    'mobilenet_2': ['', 'fe', 'fe_dropout', 'fe_fc8'],
    'ensemble2': ['', 'demo', 'study'], 'ensemble4': ['', 'demo', 'study'],
    'composite4': ['', 'demo', 'study'],
    # Wrappers: their argument is another config file and its argument.
    'cv': ['configs/scratch2.py:exp5', 'configs/vgg16_2.py:pipeline'],
    'repeat': ['configs/benmal.py:run1'],
    'shen_patch': ['', 'resnet50', 'vgg16', 'resnet50,demo', 'vgg16,demo'],
    'whole': ['', 'resnet50', 'vgg16', 'demo'],
}
HEAVY = ('jax', 'flax', 'optax', 'tensorflow', 'tensorflow_datasets', 'orbax')

_LOAD_ALL = '''
import json, sys
from mammo_jax.config_lib import loader
variants, root = json.loads(sys.argv[1]), sys.argv[2]
for name, args in variants.items():
  for arg in args:
    for a in (arg, f'{arg},smoke' if arg else 'smoke'):
      loader.load_config(f'{root}/configs/{name}.py:{a}', '/nonexistent').to_json_best_effort()
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
'''


def test_every_config_file_is_listed():
  files = {f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')}
  assert files == set(VARIANTS)


def test_loading_every_config_imports_neither_jax_nor_tensorflow(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-c', _LOAD_ALL, json.dumps(VARIANTS), ROOT],
                        cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  loaded = set(json.loads(done.stdout.splitlines()[-1]))
  assert 'ml_collections' in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_no_config_file_edits_sys_path_or_imports_configs():
  for name in VARIANTS:
    with open(os.path.join(ROOT, 'configs', f'{name}.py')) as f:
      text = f.read()
    assert 'sys.path' not in text and 'from configs' not in text, name


def _project_copy(tmp_path):
  """A second project holding configs/ whose scratch4.py trains 7 epochs: members of its
  ensemble config must come from it, not from the cwd or mammo_jax's own repository."""
  project = tmp_path / 'project'
  shutil.copytree(os.path.join(ROOT, 'configs'), project / 'configs')
  with open(project / 'configs' / 'scratch4.py', 'a') as f:
    f.write('\n_get_config = get_config\n'
            'def get_config(arg=None):\n'
            '  config = _get_config(arg)\n'
            '  config.num_epochs = 7\n'
            '  return config\n')
  decoy = tmp_path / 'cwd' / 'configs'
  decoy.mkdir(parents=True)
  (decoy / 'scratch4.py').write_text('raise RuntimeError("loaded from the cwd")\n')
  return project, tmp_path / 'cwd'


def test_ensemble_members_resolve_against_the_ensembles_project_not_the_cwd(tmp_path,
                                                                             monkeypatch):
  project, cwd = _project_copy(tmp_path)
  monkeypatch.chdir(cwd)
  config = loader.load_config(f'{project}/configs/ensemble4.py:smoke', '/nonexistent')
  assert config.ensemble.root == str(project)
  m1 = ensembles.member_config('m1', config.ensemble.members.m1, config.data,
                               config.ensemble.root)
  assert m1.num_epochs == 7 and m1.model.name == 'scratch4_m1'
  # The repository's own ensemble config resolves to the repository, from any cwd.
  config = load_config('ensemble4', 'smoke')
  assert config.ensemble.root == ROOT
  m1 = ensembles.member_config('m1', config.ensemble.members.m1, config.data,
                               config.ensemble.root)
  assert m1.num_epochs == 2  # smoke, from ROOT/configs/scratch4.py


def test_ensemble_members_resolve_from_another_cwd_in_a_fresh_process(tmp_path):
  """As `python -m mammo_jax.main --config=/abs/configs/ensemble4.py` run elsewhere would."""
  project, cwd = _project_copy(tmp_path)
  code = ('import sys\n'
          'from mammo_jax.config_lib import ensembles, loader\n'
          'c = loader.load_config(sys.argv[1], "/nonexistent")\n'
          'm = ensembles.member_config("m2", c.ensemble.members.m2, c.data, c.ensemble.root)\n'
          'print(m.num_epochs, m.model.name)\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-c', code, f'{project}/configs/ensemble4.py:study'],
                        cwd=cwd, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ['7', 'scratch4_m2']


def test_both_override_syntaxes_set_fields_through_one_rule():
  config = base.base_config()
  overrides.apply_nested(config, {'model': {'trainable': 'fc'}, 'num_epochs': 3}, 'stage')
  overrides.set_fields(config, overrides.parse_words("model.pretrained='' seed=4"), 'member')
  assert (config.model.trainable, config.num_epochs, config.model.pretrained, config.seed) == (
      'fc', 3, '', 4)
  errors = []
  for apply in (lambda c: overrides.apply_nested(c, {'model': {'fcc': 1}}, 'X'),
                lambda c: overrides.set_fields(c, overrides.parse_words('model.fcc=1'), 'X'),
                lambda c: overrides.apply_nested(c, {'seed': {'x': 1}}, 'X')):
    with pytest.raises(ValueError) as e:
      apply(base.base_config())
    errors.append(str(e.value))
  assert errors[:2] == ['X model.fcc names no field of the config'] * 2
  assert errors[2] == 'X seed.x names no field of the config'
  with pytest.raises(ValueError, match=r"^X num_epochs='three': "):
    overrides.set_fields(base.base_config(), overrides.parse_words('num_epochs=three'), 'X')


def test_study_augmentation_settings_have_one_source():
  for name, values in base.STUDY_AUGMENT.items():
    assert augment.STUDY_SETTINGS[name] == augment.AugmentSpec(**values)
    assert set(values) == set(base.base_config().augment.keys())
  assert base.base_config().augment.to_dict() == base.STUDY_AUGMENT['A']


# Member hashes of configs as they were before config.published and model.dont_load existed
# (workdirs written then must be reused): computed with the code of that time.
OLD_MEMBER_HASHES = {'configs/scratch4.py:m1': 'e5882097',
                     'configs/vgg16_4.py:pipeline': '961fda29',
                     'configs/vgg16_2.py:ft2,smoke': '39c516bd'}


@pytest.mark.parametrize('spec', sorted(OLD_MEMBER_HASHES))
def test_bookkeeping_fields_leave_fingerprints_and_member_hashes_unchanged(spec):
  data = load_config('default', 'smoke').data
  member = ml_collections.ConfigDict({'config': spec, 'overrides': ''})
  config = ensembles.member_config('x', member, data, ROOT)
  assert 'published' in config
  assert workdir.config_hash(config) == OLD_MEMBER_HASHES[spec]
  as_json = json.loads(config.to_json_best_effort())
  without = json.loads(config.to_json_best_effort())
  del without['published']
  del without['model']['dont_load']
  del without['evaluator']
  del without['divergence_factor']
  del without['evaluation']
  assert workdir.config_fingerprint(as_json) == workdir.config_fingerprint(without)
  as_json['model']['dont_load'] = 'anything'
  as_json['published'] = {'test_accuracy': 1.0}
  as_json['divergence_factor'] = 0.0
  as_json['evaluation'] = {'ci_resamples': 5000, 'temperature_scaling': True}
  assert workdir.config_fingerprint(as_json) == workdir.config_fingerprint(without)
  without['seed'] = 99  # a real field still counts
  assert workdir.config_fingerprint(as_json) != workdir.config_fingerprint(without)


def test_vgg16_configs_skip_the_imagenet_top_and_others_load_everything():
  assert load_config('vgg16_2', 'ft1').model.dont_load == r'^(fc1|fc2|predictions)(/|$)'
  assert load_config('vgg16_4', 'pipeline').model.dont_load == r'^(fc1|fc2|predictions)(/|$)'
  assert load_config('scratch2').model.dont_load == ''
