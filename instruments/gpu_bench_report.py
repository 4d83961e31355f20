"""Tables of an `instruments/gpu_bench.sh` run: the original EDM and edm_zoo on one GPU.

  python instruments/gpu_bench_report.py --dir=RAW --json=results.json --markdown=report.md

RAW holds one file per measurement (our bench's JSON, or the harness's one JSON
line): `ours_<precision>`, `orig_train`, `orig_train_tf32`, `orig_nll`,
`ours_sample<n>` / `orig_sample<n>`, `precision_study`. Whatever is missing (a run
cut short) is left out of the tables and named under them.
"""

import glob
import json
import os

from absl import app
from absl import flags

_DIR = flags.DEFINE_string('dir', None, 'the measurements folder')
_JSON = flags.DEFINE_string('json', None, 'write every measurement here, by name')
_MARKDOWN = flags.DEFINE_string('markdown', None, 'write the tables here')


def read(path: str) -> dict | None:
  """Our bench's indented JSON or the harness's last line; None if unreadable."""
  with open(path) as f:
    text = f.read().strip()
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    try:
      return json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
      return None


def _ms(seconds: float) -> str:
  return f'{1e3 * seconds:.1f} ms'


def _gib(value) -> str:
  return '' if value is None else f'{value:.2f} GiB'


def tables(m: dict[str, dict]) -> str:
  """The Markdown tables of the measurements `m` ({name: JSON})."""
  lines = []
  ours, orig = m.get('ours_highest'), m.get('orig_train')
  device = (ours or {}).get('device') or (orig or {}).get('device') or '?'
  c = (ours or {}).get('config', {})
  lines += [f"Device: {device}. edm_zoo's config: nf {c.get('nf')}, {c.get('n_layers')} "
            f"layers, batch {c.get('batch_size')}, T {c.get('T')}.", '',
            '| what | original EDM | edm_zoo | ratio |', '|---|---|---|---|']
  if ours and orig:
    lines.append(f"| train step, float32 | {_ms(orig['median_s'])} | "
                 f"{_ms(ours['train_step_median_s'])} | "
                 f"{orig['median_s'] / ours['train_step_median_s']:.1f}x |")
  tf32 = m.get('ours_tf32')
  if m.get('orig_train_tf32') and tf32:
    o = m['orig_train_tf32']['median_s']
    lines.append(f"| train step, TF32 matmuls | {_ms(o)} | {_ms(tf32['train_step_median_s'])}"
                 f" | {o / tf32['train_step_median_s']:.1f}x |")
  if ours and m.get('orig_nll'):
    o = m['orig_nll']['median_s']
    lines.append(f"| NLL per batch, float32 | {_ms(o)} | {_ms(ours['nll_batch_median_s'])}"
                 f" | {o / ours['nll_batch_median_s']:.1f}x |")
  if ours and orig:
    lines.append(f"| peak GPU memory, train process | {_gib(orig.get('cuda_peak_gib'))} | "
                 f"{_gib(ours.get('device_peak_gib'))} | |")
  for n in sorted(int(p[len('ours_sample'):]) for p in m if p.startswith('ours_sample')):
    ours_s, orig_s = m[f'ours_sample{n}'], m.get(f'orig_sample{n}')
    row = f"| sampling, {n} molecules per batch, 1000 steps (molecules/h) | "
    if orig_s:
      orig_rate = 3600 / orig_s['seconds_per_molecule_full_chain']
      row += (f"{orig_rate:,.0f} | {ours_s['sample_molecules_per_hour']:,.0f} | "
              f"{ours_s['sample_molecules_per_hour'] / orig_rate:.1f}x |")
    else:
      row += f"| {ours_s['sample_molecules_per_hour']:,.0f} | |"
    lines.append(row)
    lines.append(f"| peak GPU memory, sampling {n} | "
                 f"{_gib((orig_s or {}).get('cuda_peak_gib'))} | "
                 f"{_gib(ours_s.get('device_peak_gib'))} | |")

  study = (m.get('precision_study') or {}).get('runs', {})
  precisions = [p for p in ('highest', 'tf32', 'bf16')
                if f'ours_{p}' in m or f'{p}_seed0' in study]
  if precisions:
    lines += ['', 'edm_zoo by matmul precision (`--matmul_precision`):', '',
              '| precision | train step | NLL | peak GPU memory | parity arrays out of '
              'tolerance (largest abs error) | train parity | loss gap vs float32 seed noise |',
              '|---|---|---|---|---|---|---|']
    for p in precisions:
      b, s = m.get(f'ours_{p}') or {}, study.get(f'{p}_seed0') or {}
      cells = [p, _ms(b['train_step_median_s']) if b else '',
               _ms(b['nll_batch_median_s']) if b else '', _gib(b.get('device_peak_gib'))]
      for key in ('parity', 'train_parity'):
        cells.append(f"{s[f'{key}_failing']}/{s[f'{key}_arrays']} "
                     f"({s[f'{key}_worst_abs']:.1e})" if f'{key}_failing' in s else '')
      cells.append(f"{s['gap']:.4f} vs {s['noise']:.4f}: "
                   + ('within noise' if s['within_noise'] else 'outside noise')
                   if 'gap' in s else ('reference' if p == 'highest' and s else ''))
      lines.append('| ' + ' | '.join(cells) + ' |')
  expected = ['ours_highest', 'orig_train', 'orig_nll', 'orig_train_tf32', 'ours_tf32',
              'ours_bf16', 'precision_study']
  missing = [name for name in expected if name not in m]
  if missing:
    lines += ['', f"Not measured in this run: {', '.join(missing)}."]
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if not _DIR.value or not os.path.isdir(_DIR.value):
    raise app.UsageError(f'--dir: no folder {_DIR.value!r}')
  m = {}
  for path in sorted(glob.glob(os.path.join(_DIR.value, '*.json'))):
    data = read(path)
    if data is not None:
      m[os.path.basename(path)[:-len('.json')]] = data
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(m, f, indent=1)
  text = tables(m)
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, 'w') as f:
      f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
