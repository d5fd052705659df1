"""The project's docs stand alone: every study citation in code and README points to
docs/REFERENCE_STUDY.md, and every section and defect it cites exists there."""

import os
import re
import subprocess

from tests.conftest import ROOT

STUDY = os.path.join(ROOT, 'docs', 'REFERENCE_STUDY.md')


def _tracked_sources() -> list[str]:
  files = subprocess.run(['git', 'ls-files', '*.py', '*.md', '*.ipynb'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
  return [f for f in files if not f.startswith('docs/') and f != 'tests/test_docs.py']


def test_study_citations_point_into_docs_and_exist():
  with open(STUDY) as f:
    study = f.read()
  headings = set(re.findall(r'^#+ (\d+(?:\.\d+)*)[. ]', study, re.M))
  defects = set(re.findall(r'\bD(\d+)\b', study))
  cited_sections, cited_defects = set(), set()
  for path in _tracked_sources():
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
      text = f.read()
    for m in re.finditer(r'(\S*)REFERENCE_STUDY\.md', text):
      assert m.group(1).endswith('docs/'), f'{path}: {m.group(0)} (cite docs/REFERENCE_STUDY.md)'
    if 'REFERENCE_STUDY.md' in text:
      cited_sections |= set(re.findall(r'§(\d+(?:\.\d+)*)', text))
      cited_defects |= set(re.findall(r'\bdefect D(\d+)\b', text))
  assert cited_sections and cited_sections <= headings, sorted(cited_sections - headings)
  assert {str(i) for i in range(1, 14)} <= defects
  assert cited_defects <= defects


def test_dataset_paths_in_the_docs_name_the_builders_version():
  """README's commands are run literally (tests/tfds_cbis/test_cli_builds.py): a path into a
  build must name the version the builder writes, tfds_cbis.VERSION."""
  import tfds_cbis  # pylint: disable=g-import-not-at-top
  for path in _tracked_sources() + ['Makefile']:
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
      for version in re.findall(r'cbis_ddsm/[a-z0-9_]+/(\d+\.\d+\.\d+)/', f.read()):
        assert version == tfds_cbis.VERSION, f'{path}: cbis_ddsm/.../{version}/'
