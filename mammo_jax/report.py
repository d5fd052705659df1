"""Reports of finished runs: `python -m mammo_jax.report --workdir=DIR`.

DIR is an ensemble workdir (ensemble.json; mammo_jax.ensemble writes the report itself at the
end), a pipeline workdir (pipeline.json) or a single run (results.json). The report lists each
model's epochs, validation and test accuracy, AUC and loss, each ensemble method's accuracy,
and the confusion matrices and ROC curves, in DIR/report.md (images linked) and
DIR/report.html (self-contained: images embedded as base64 data URIs). On the real CBIS-DDSM
the study's published numbers (docs/REFERENCE_STUDY.md §5) stand beside ours; on synthetic data a
banner says that the numbers are synthetic and no comparison is made. Those numbers come from
the configs (config.published): a run's config.json, or, for an ensemble, ensemble.json, which
holds them per member and per method.

Metrics with a 95 % interval in results.json / ensemble.json (ci95: patient-level percentile
bootstrap, mammo_jax.bootstrap) are shown as `61.3 (56.0–66.4)`, and the report says which
models' test-accuracy intervals overlap; workdirs written before intervals show the point
estimate alone. The study's published test accuracies get the Wilson score interval for its
STUDY_TEST_EXAMPLES test patches.
"""

from __future__ import annotations

import base64
import html
import math
import os
import sys

from absl import app
from absl import flags

from mammo_jax import bootstrap
from mammo_jax import distributed
from mammo_jax import evaluators
from mammo_jax import metrics
from mammo_jax import workdir as workdir_lib

SYNTHETIC_WARNING = ('SYNTHETIC DATA: every number in this report comes from the synthetic '
                     'CBIS-DDSM of tfds_cbis.synthetic. It says nothing about real mammograms '
                     'and is not comparable with the study\'s published results.')
REPORT_MD, REPORT_HTML = 'report.md', 'report.html'
# A run written before config.published existed: the field is absent, not None.
_UNRECORDED = 'unrecorded'
STUDY_TEST_EXAMPLES = 336  # the study's test patches (docs/REFERENCE_STUDY.md)


def _models(workdir: str) -> tuple[list[dict], dict | None]:
  """[{name, run_dir, config (spec or ''), overrides}], and ensemble.json if there is one."""
  path = os.path.join(workdir, workdir_lib.ENSEMBLE_JSON)
  if os.path.exists(path):
    summary = workdir_lib.read_json(path)
    return [{'name': n, 'run_dir': os.path.join(workdir, m['run_dir']), 'config': m['config'],
             'overrides': m['overrides'], 'stages': m.get('stages'),
             **({'published': m['published']} if 'published' in m else {})}
            for n, m in summary['members'].items()], summary
  path = os.path.join(workdir, workdir_lib.PIPELINE_JSON)
  if os.path.exists(path):
    stages = workdir_lib.read_json(path)
    return [{'name': s, 'run_dir': os.path.join(workdir, s), 'config': '', 'overrides': '',
             'stages': None} for s in stages], None
  if workdir_lib.is_finished(workdir):
    return [{'name': os.path.basename(os.path.normpath(workdir)), 'run_dir': workdir,
             'config': '', 'overrides': '', 'stages': None}], None
  raise FileNotFoundError(f'{workdir} holds no finished run: no ensemble.json, pipeline.json '
                          f'or results.json')


def _pct(value) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else f'{100 * value:.2f}'


def _num(value, digits=4) -> str:
  return metrics.fmt(value, digits)


def _metric(value, digits: int | None) -> str:
  return _pct(value) if digits is None else _num(value, digits)


def _study(value, digits=2) -> str:
  return '—' if value is None else f'{value:.{digits}f}'


def _short(value, digits: int | None) -> str:
  """A number inside an interval cell: percentages with one decimal."""
  return _metric(value, digits) if digits is not None else (
      'n/a' if value is None or not math.isfinite(value) else f'{100 * value:.1f}')


def _with_ci(split_metrics: dict, key: str, digits: int | None) -> str:
  """'61.3 (56.0–66.4)' where split_metrics has key's ci95, else the point estimate alone."""
  ci = (split_metrics.get('ci95') or {}).get(key)
  if not ci:
    return _metric(split_metrics.get(key), digits)
  lo, hi = (_short(v, digits) for v in ci)
  return f'{_short(split_metrics.get(key), digits)} ({lo}–{hi})'


def _study_test_accuracy(published: dict) -> str:
  """A published test accuracy (percent) with its Wilson interval for the examples it was
  measured on (published test_examples; the study's test set by default)."""
  value = published.get('test_accuracy')
  if value is None:
    return '—'
  n = published.get('test_examples', STUDY_TEST_EXAMPLES)
  lo, hi = bootstrap.wilson_interval(value / 100, n)
  return f'{value:.2f} ({100 * lo:.1f}–{100 * hi:.1f})'


def _overlaps(entries: list[tuple[str, dict]], key: str = 'accuracy') -> list[str]:
  """Sentences on which test intervals of `key` overlap, for the entries that have one."""
  with_ci = [(n, m) for n, m in entries if (m.get('ci95') or {}).get(key)]
  if len(with_ci) < 2:
    return []
  apart = [f'{a} vs {b}' for i, (a, ma) in enumerate(with_ci) for b, mb in with_ci[i + 1:]
           if ma['ci95'][key][1] < mb['ci95'][key][0] or mb['ci95'][key][1] < ma['ci95'][key][0]]
  first = with_ci[0][1]
  how = (f'95 % intervals: {first.get("ci_method", bootstrap.METHOD)}, '
         f'{first.get("ci_resamples")} resamples of the patients')
  if not apart:
    text = (f'The test {key} intervals of all {len(with_ci)} models and methods overlap one '
            f'another ({how}).')
  else:
    text = (f'Test {key} intervals that do not overlap: {"; ".join(apart)}; every other pair '
            f'overlaps ({how}).')
  return [text + ' Overlapping intervals do not show two models equal, nor do separate ones '
          'measure their difference: for that, compare two runs on the same examples with '
          '`python -m mammo_jax.compare RUN_A RUN_B` (paired bootstrap, McNemar).']


def _rule_notes(grid_step: float) -> list[tuple[str, str]]:
  return [
      ('vote', 'vote: majority of the members\' predicted classes; a tie goes to the tied '
               'class voted for by the earliest member listed (the study\'s '
               'Counter.most_common rule). AUC from the vote fractions.'),
      ('average', 'average: argmax of the mean of the members\' probabilities (a member '
                  'listed twice counts twice).'),
      ('weighted', f'weighted: argmax of a weighted sum; the weights are the first most '
                   f'accurate on the validation split over the grid of multiples of '
                   f'{grid_step:g} summing to 1 (286 combinations for four members). The study '
                   f'tuned them on half of its test set (defect D3); here the test split is '
                   f'never used to choose anything.'),
      ('threshold', 'threshold: the composite 4-class model; the type and the severity model '
                    'are each cut at 0.5, label = 2 x type + severity.'),
      ('product', 'product: the composite with the two models\' probabilities multiplied; '
                  'the same predictions as threshold, plus 4-class scores for ROC and AUC.'),
  ]


def build(workdir: str) -> list[tuple]:
  """The report as blocks: ('h1'|'h2'|'p'|'warning', text), ('table', header, rows),
  ('list', items), ('figures', [(caption, path)])."""
  models, ensemble = _models(workdir)
  for m in models:
    m['results'] = workdir_lib.read_results(m['run_dir'])
    m['run_config'] = workdir_lib.read_config(m['run_dir'])
    if 'published' not in m:  # not an ensemble member: the run's own config.json has them
      m['published'] = m['run_config'].get('published', _UNRECORDED)
  synthetic = any(m['results'].get('synthetic_data', True) for m in models)
  compare = not synthetic
  title = 'Ensemble report' if ensemble else 'Run report'
  blocks = [('h1', f'{title}: {os.path.abspath(workdir)}')]
  if synthetic:
    blocks.append(('warning', SYNTHETIC_WARNING))
  else:
    blocks.append(('p', 'Real CBIS-DDSM: the study\'s published numbers (docs/REFERENCE_STUDY.md '
                        '§5) are shown beside ours. They are not measured on the same split: '
                        'the study\'s test set had 336 patches, ours is built from the DICOM '
                        'download (README, "The datasets"); and the study\'s VGG16 test '
                        'numbers used a different preprocessing at test time (defect D1).'))
  examples = models[0]['results'].get('examples')
  if examples:
    blocks.append(('p', 'Examples per split: ' + ', '.join(
        f'{s} {examples[s]}' for s in ('train', 'validation', 'test') if s in examples) + '.'))

  # The metrics shown are the evaluator's (the first model's run config names it).
  evaluator = evaluators.of_config(models[0]['run_config'])
  split_names = {'validation': 'val', 'test': 'test'}
  header = ['model', 'config', 'task', 'best epoch / run'] + [
      f'{split_names[s]} {label}' for s in split_names for _, label, _ in evaluator.run_columns]
  if compare:
    header += ['study val acc %', 'study test acc %', 'study test AUC']
  rows = []
  for m in models:
    r = m['results']
    spec = m['config'] or r.get('model', '')
    if m['overrides']:
      spec += f' [{m["overrides"]}]'
    if m['stages']:
      spec += f' (stages {" > ".join(m["stages"])})'
    best = r.get('best_epoch')
    row = [m['name'], spec, r['task'],
           f'{"n/a" if best is None else best + 1} / {r.get("epochs_run")}'] + [
               _with_ci(r[s], key, digits) for s in split_names
               for key, _, digits in evaluator.run_columns]
    if compare:
      published = m['published'] if isinstance(m['published'], dict) else {}
      row += [_study(published.get('validation_accuracy')),
              _study_test_accuracy(published),
              _study(published.get('test_auc'), 3)]
    rows.append(row)
  blocks += [('h2', 'Models'), ('table', header, rows),
             ('p', 'Best epoch counts from 1: the epoch of the lowest validation loss, whose '
                   'checkpoint is evaluated. Test metrics are measured once, on that '
                   'checkpoint.')]
  unrecorded = [m['name'] for m in models if m['published'] == _UNRECORDED]
  if compare and unrecorded:
    blocks.append(('p', f'{", ".join(unrecorded)}: written before runs recorded the study\'s '
                        f'published numbers (config.published). Run the same command again '
                        f'(finished runs, stages and ensemble members are reused, not '
                        f'retrained) to add them, then the report.'))

  if ensemble:
    header = ['method', 'rule', 'members', 'weights', 'val acc %'] + [
        f'test {label}' for _, label, _ in evaluator.method_columns]
    if compare:
      header += ['study test acc %', 'study note']
    rows = []
    for e in ensemble['methods']:
      weights = ', '.join(f'{w:g}' for w in e['weights']) if e['weights'] else ''
      val = _with_ci(e['validation'], 'accuracy', None)
      if e['rule'] == 'weighted':
        val += ' (tuned here)'
      row = [e['name'], e['rule'], ' + '.join(e['members']), weights, val] + [
          _with_ci(e['test'], key, digits) for key, _, digits in evaluator.method_columns]
      if compare:
        published = e.get('published') or {}
        row += [_study_test_accuracy(published), published.get('note', '')]
      rows.append(row)
    used = {e['rule'] for e in ensemble['methods']}
    blocks += [('h2', 'Ensembles'), ('table', header, rows),
               ('list', [text for rule, text in _rule_notes(ensemble['grid_step'])
                         if rule in used])]
    notes = [f'Member {n} is a VGG16 trained without ImageNet weights (model.pretrained=\'\'), '
             f'unlike the study\'s transfer learning.'
             for n, m in ensemble['members'].items() if m.get('vgg_without_imagenet')]
    if notes:
      blocks.append(('list', notes))

  entries = [(m['name'], m['results']['test']) for m in models]
  entries += [(e['name'], e['test']) for e in (ensemble or {}).get('methods', [])]
  overlap = _overlaps(entries)
  if compare:
    overlap.append(f'The study\'s test accuracies are shown with their Wilson score 95 % '
                   f'interval for the test patches they were measured on ({STUDY_TEST_EXAMPLES}, '
                   f'or as the note says); its per-patch predictions, hence patients, are not '
                   f'published.')
  if overlap:
    blocks += [('h2', 'Intervals'), ('list', overlap)]
  blocks += _calibration(models)

  blocks.append(('h2', 'Confusion matrices, ROC curves, reliability diagrams (test split)'))
  for m in models:
    figures = [(f'{m["name"]}: {kind}', os.path.join(m['run_dir'], f'{kind}_test.png'))
               for kind in ('confusion', 'roc', 'reliability')]
    blocks.append(('figures', [(c, p) for c, p in figures if os.path.exists(p)]))
  for e in (ensemble or {}).get('methods', []):
    paths = e.get('plots', {}).get('test', {})
    blocks.append(('figures', [(f'{e["name"]}: {kind}', os.path.join(workdir, paths[kind]))
                               for kind in ('confusion', 'roc') if kind in paths]))
  return blocks


def _calibration(models: list[dict]) -> list[tuple]:
  """A table of each model's ECE and NLL (and temperature-scaled ones) where runs have them."""
  runs = [m for m in models if 'ece' in m['results']['test']]
  if not runs:
    return []
  scaled = any('temperature_scaled' in m['results']['test'] for m in runs)
  header = ['model', 'val ECE', 'test ECE', 'test NLL']
  if scaled:
    header += ['temperature (fitted on val)', 'test ECE scaled', 'test NLL scaled']
  rows = []
  for m in runs:
    r = m['results']
    row = [m['name'], _num(r['validation'].get('ece'), 3), _num(r['test']['ece'], 3),
           _num(r['test'].get('nll'), 3)]
    if scaled:
      t = r['test'].get('temperature_scaled') or {}
      row += [_num(t.get('temperature'), 3), _num(t.get('ece'), 3), _num(t.get('nll'), 3)]
    rows.append(row)
  return [('h2', 'Calibration'), ('table', header, rows),
          ('p', 'ECE: expected calibration error of the top-class confidence in 15 equal-width '
                'bins. Reliability diagrams: reliability_validation.png and '
                'reliability_test.png in each run\'s folder.')]


def _md_cell(text) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def render_markdown(blocks: list[tuple], base_dir: str) -> str:
  out = []
  for block in blocks:
    kind = block[0]
    if kind == 'h1':
      out.append(f'# {block[1]}')
    elif kind == 'h2':
      out.append(f'## {block[1]}')
    elif kind == 'p':
      out.append(block[1])
    elif kind == 'warning':
      out.append(f'> **{block[1]}**')
    elif kind == 'list':
      out.append('\n'.join(f'- {item}' for item in block[1]))
    elif kind == 'table':
      _, header, rows = block
      lines = ['| ' + ' | '.join(_md_cell(h) for h in header) + ' |',
               '|' + '---|' * len(header)]
      lines += ['| ' + ' | '.join(_md_cell(c) for c in row) + ' |' for row in rows]
      out.append('\n'.join(lines))
    elif kind == 'figures' and block[1]:
      out.append(' '.join(f'![{c}]({os.path.relpath(p, base_dir)})' for c, p in block[1]))
  return '\n\n'.join(out) + '\n'


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px}
th{background:#eee}td{text-align:right}td:nth-child(-n+3){text-align:left}
.warning{background:#fdd;border:3px solid #c00;padding:1em;font-weight:bold;font-size:1.2em}
figure{display:inline-block;margin:0.5em}figcaption{text-align:center}img{max-width:520px}"""


def render_html(blocks: list[tuple]) -> str:
  esc = html.escape
  out = ['<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
         f'<title>{esc(blocks[0][1])}</title><style>{_CSS}</style></head><body>']
  for block in blocks:
    kind = block[0]
    if kind in ('h1', 'h2', 'p'):
      out.append(f'<{kind}>{esc(block[1])}</{kind}>')
    elif kind == 'warning':
      out.append(f'<div class="warning">{esc(block[1])}</div>')
    elif kind == 'list':
      out.append('<ul>' + ''.join(f'<li>{esc(i)}</li>' for i in block[1]) + '</ul>')
    elif kind == 'table':
      _, header, rows = block
      out.append('<table><tr>' + ''.join(f'<th>{esc(str(h))}</th>' for h in header) + '</tr>')
      out += ['<tr>' + ''.join(f'<td>{esc(str(c))}</td>' for c in row) + '</tr>'
              for row in rows]
      out.append('</table>')
    elif kind == 'figures':
      for caption, path in block[1]:
        with open(path, 'rb') as f:
          data = base64.b64encode(f.read()).decode('ascii')
        out.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                   f'<figcaption>{esc(caption)}</figcaption></figure>')
  out.append('</body></html>')
  return '\n'.join(out) + '\n'


def write_report(workdir: str) -> tuple[str, str]:
  """Writes DIR/report.md and DIR/report.html (process 0 of a run of several); returns their
  paths."""
  md_path, html_path = os.path.join(workdir, REPORT_MD), os.path.join(workdir, REPORT_HTML)
  distributed.on_main(_write_report, workdir, md_path, html_path)
  return md_path, html_path


def _write_report(workdir: str, md_path: str, html_path: str) -> None:
  blocks = build(workdir)
  with open(md_path, 'w') as f:
    f.write(render_markdown(blocks, workdir))
  with open(html_path, 'w') as f:
    f.write(render_html(blocks))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    md_path, html_path = write_report(flags.FLAGS.workdir)
  except FileNotFoundError as e:
    print(f'mammo_jax.report: error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  print(f'Report: {html_path} (and {md_path})', flush=True)


if __name__ == '__main__':
  # Defined here, not at import: mammo_jax.main, which imports this module through the
  # ensemble runner, has its own --workdir.
  flags.DEFINE_string('workdir', None, 'A finished ensemble, pipeline or run directory.')
  flags.mark_flag_as_required('workdir')
  app.run(main)
