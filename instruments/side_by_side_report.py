"""Medians and ratios of a `instruments/side_by_side.sh` run (ours vs the original EDM,
timed in one run on one machine), as a Markdown table.

  python instruments/side_by_side_report.py --dir=OUT_DIR [--plot=PNG --size_study=JSON]

--plot draws how the train step grows: time and peak memory against the batch size
and against the molecule size (ours and the original: batches of 64 QM9 molecules of
one size each, and of 16 drug-like moses3d molecules of one size under the GEOM-Drugs
config) and, from a `launch/bench.py --what=size_study --json` file, against
drug-sized molecules (ours).
"""

import glob
import json
import os
import statistics

from absl import app
from absl import flags
import matplotlib
import matplotlib.ticker
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

_DIR = flags.DEFINE_string('dir', None, 'the folder instruments/side_by_side.sh wrote')
_PLOT = flags.DEFINE_string('plot', None, 'write the cost-growth plot here (PNG)')
_SIZE_STUDY = flags.DEFINE_string('size_study', None,
                                  'a launch/bench.py --what=size_study --json file')


def _read(path):
  """Our bench's indented JSON, or the harness's one JSON line (the last line)."""
  with open(path) as f:
    text = f.read().strip()
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return json.loads(text.splitlines()[-1])


def _median(pattern, key):
  values = [_read(p)[key] for p in sorted(glob.glob(pattern))]
  return (statistics.median(values) if values else float('nan')), values


def _round_rows(d):
  """(what, original, its runs, ours, our runs, ratio) of the published-config rounds."""
  rows = []
  ours, ours_all = _median(f'{d}/ours_r*.json', 'train_step_median_s')
  orig, orig_all = _median(f'{d}/orig_train_r*.json', 'median_s')
  rows.append(('train step, batch 64', orig, orig_all, ours, ours_all, orig / ours))
  ours, ours_all = _median(f'{d}/ours_r*.json', 'nll_batch_median_s')
  orig, orig_all = _median(f'{d}/orig_nll_r*.json', 'median_s')
  rows.append(('NLL, batch of 64', orig, orig_all, ours, ours_all, orig / ours))
  ours, ours_all = _median(f'{d}/ours_r*.json', 'sample_molecules_per_hour')
  orig_s, orig_s_all = _median(f'{d}/orig_sample_r*.json', 'seconds_per_molecule_full_chain')
  rows.append(('sampling, 10 molecules, 1000 steps (molecules/h)', 3600 / orig_s,
               [3600 / s for s in orig_s_all], ours, ours_all, ours * orig_s / 3600))
  return rows


def main(argv):
  del argv
  d = _DIR.value
  if not d or not os.path.isdir(d):
    raise SystemExit('error: give --dir=OUT_DIR (a instruments/side_by_side.sh output folder).')
  with open(os.path.join(d, 'processor.txt')) as f:
    print('processor:', ' | '.join(line.strip() for line in f if line.strip()))
  rows = []
  # PARTS picks what side_by_side.sh ran: report what is there.
  rounds = bool(glob.glob(f'{d}/ours_r*.json') and glob.glob(f'{d}/orig_train_r*.json'))
  if rounds:
    rows += _round_rows(d)
  if os.path.exists(f'{d}/ours_s100.json'):
    ours, ours_all = _median(f'{d}/ours_s100.json', 'sample_molecules_per_hour')
    orig_s, orig_s_all = _median(f'{d}/orig_sample_s100.json',
                                 'seconds_per_molecule_full_chain')
    rows.append(('sampling, 100 per batch, 1000 steps (molecules/h)', 3600 / orig_s,
                 [3600 / s for s in orig_s_all], ours, ours_all, ours * orig_s / 3600))
  for bs in (16, 32):
    if os.path.exists(f'{d}/ours_b{bs}.json'):
      ours, ours_all = _median(f'{d}/ours_b{bs}.json', 'train_step_median_s')
      orig, orig_all = _median(f'{d}/orig_train_b{bs}.json', 'median_s')
      rows.append((f'train step, batch {bs}', orig, orig_all, ours, ours_all, orig / ours))
  if rows:
    print('| what | original EDM | edm_zoo | ratio |')
    print('|---|---|---|---|')
  for what, o, o_all, z, z_all, ratio in rows:
    fmt = lambda v: ', '.join(f'{x:.3g}' for x in v)
    print(f'| {what} | {o:.3g} ({fmt(o_all)}) | {z:.3g} ({fmt(z_all)}) | {ratio:.1f}x |')
  if rounds:
    rss_ours = max(_read(p)['peak_rss_gb'] for p in glob.glob(f'{d}/ours_r*.json'))
    rss_orig = max(_read(p)['peak_rss_mb']
                   for p in glob.glob(f'{d}/orig_train_r*.json')) / 1024
    print(f'| peak RSS (train+NLL+sampling process / train process) | {rss_orig:.2f} GB | '
          f'{rss_ours:.2f} GB | |')
    gflops = [_read(p)['train_gflops_per_s'] for p in glob.glob(f'{d}/ours_r*.json')]
    print(f'achieved train GFLOP/s (ours): {", ".join(f"{g:.1f}" for g in gflops)}')
  for kind, what in (('size', 'batch of 64 QM9 molecules, QM9 config'),
                     ('geom', 'batch of 16 drug-like molecules, GEOM-Drugs config')):
    rows = [(str(n), *figures) for n, figures in sorted(_by_size(d, kind).items())]
    mixed = _geom_mixed(d) if kind == 'geom' else None
    if mixed:
      ours, ours_gb, atoms, orig, orig_gb, padded = mixed
      rows.append((f'random batches ({atoms:.1f} atoms on average; the original pads '
                   f'to {padded:.1f})', ours, ours_gb, orig, orig_gb))
    if rows:
      print()
      print(f'| atoms per molecule ({what}) | original EDM | edm_zoo | ratio | '
            'peak RSS original / edm_zoo |')
      print('|---|---|---|---|---|')
      for label, ours, ours_gb, orig, orig_gb in rows:
        print(f'| {label} | {orig:.3g} s | {ours:.3g} s | {orig / ours:.1f}x | '
              f'{orig_gb:.2f} / {ours_gb:.2f} GB |')
  if _PLOT.value:
    plot(d, _PLOT.value, _SIZE_STUDY.value)


def _by_batch(d):
  """{batch: (ours s, ours GB, original s, original GB)} of the train runs."""
  out = {}
  for bs, ours_glob, orig_glob in ((16, 'ours_b16', 'orig_train_b16'),
                                   (32, 'ours_b32', 'orig_train_b32'),
                                   (64, 'ours_r*', 'orig_train_r*')):
    ours = [_read(p) for p in sorted(glob.glob(f'{d}/{ours_glob}.json'))]
    orig = [_read(p) for p in sorted(glob.glob(f'{d}/{orig_glob}.json'))]
    if ours and orig:
      out[bs] = (statistics.median(o['train_step_median_s'] for o in ours),
                 max(o['peak_rss_gb'] for o in ours),
                 statistics.median(o['median_s'] for o in orig),
                 max(o['peak_rss_mb'] for o in orig) / 1024)
  return out


def _by_size(d, kind='size'):
  """{atoms: (ours s, ours GB, original s, original GB)} of the one-size batches:
  QM9's (kind 'size') or drug-like molecules' under the GEOM-Drugs config ('geom')."""
  out = {}
  for p in glob.glob(f'{d}/orig_{kind}*.json'):
    n = os.path.basename(p)[len(f'orig_{kind}'):-len('.json')]
    if not n.isdigit():
      continue
    n = int(n)
    ours_path = f'{d}/ours_{kind}{n}.json'
    if not os.path.exists(ours_path):
      continue
    (row,) = _read(ours_path)['size_study']
    orig = _read(p)
    out[n] = (row['train_step_median_s'], row['peak_rss_gb'], orig['median_s'],
              orig['peak_rss_mb'] / 1024)
  return out


def _geom_mixed(d):
  """(ours s, ours GB, mean atoms, original s, original GB, original's padded size)
  on random moses3d batches of 16, or None."""
  ours_path, orig_path = f'{d}/ours_geom_mixed.json', f'{d}/orig_geom_mixed.json'
  if not (os.path.exists(ours_path) and os.path.exists(orig_path)):
    return None
  (row,) = [r for r in _read(ours_path)['size_study'] if r['molecules'] == 'moses3d']
  orig = _read(orig_path)
  return (row['train_step_median_s'], row['peak_rss_gb'], row['mean_atoms'],
          orig['median_s'], orig['peak_rss_mb'] / 1024,
          orig['padded_nodes_per_batch_mean'])


def _size_panel(ax, sizes, xlabel, title):
  n = sorted(sizes)
  ax.plot(n, [sizes[k][2] for k in n], 'o-', c='C0', label='original: train step (s)')
  ax.plot(n, [sizes[k][0] for k in n], 's-', c='C1', label='edm_zoo: train step (s)')
  ax.plot(n, [sizes[k][3] for k in n], 'o--', c='C0', mfc='none',
          label='original: peak RSS (GB)')
  ax.plot(n, [sizes[k][1] for k in n], 's--', c='C1', mfc='none',
          label='edm_zoo: peak RSS (GB)')
  ax.set(xlabel=xlabel, xscale='log', yscale='log', title=title)
  ax.set_xticks(n, [str(k) for k in n])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.legend(fontsize=7)


def plot(d, path, size_study):
  rows = _by_batch(d)
  sizes = _by_size(d)
  geom = _by_size(d, 'geom')
  panels = 2 * bool(rows) + bool(sizes) + bool(geom) + bool(size_study)
  if not panels:
    raise SystemExit(f'error: {d} holds no figures to plot.')
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
  axes = list(axes[0])
  if rows:
    batch = sorted(rows)
    ax = axes.pop(0)
    ax.plot(batch, [rows[b][2] for b in batch], 'o-', label='original EDM (PyTorch)')
    ax.plot(batch, [rows[b][0] for b in batch], 's-', label='edm_zoo')
    ax.set(xlabel='molecules per batch (QM9)', ylabel='train step (s)', xscale='log',
           yscale='log', title='time vs batch size')
    ax.set_xticks(batch, [str(b) for b in batch])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend()
    ax = axes.pop(0)
    ax.plot(batch, [rows[b][3] for b in batch], 'o-', label='original EDM (train process)')
    ax.plot(batch, [rows[b][1] for b in batch], 's-', label='edm_zoo (bench process)')
    ax.set(xlabel='molecules per batch (QM9)', ylabel='peak RSS (GB)', xscale='log',
           title='memory vs batch size')
    ax.set_xticks(batch, [str(b) for b in batch])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend()
  if sizes:
    _size_panel(axes.pop(0), sizes, 'atoms per molecule (64 QM9 molecules of one size)',
                'time and memory vs molecule size')
  if geom:
    _size_panel(axes.pop(0), geom, 'atoms per molecule (16 moses3d molecules of one size)',
                'drug-like molecules, GEOM config')
  if size_study:
    study = [r for r in _read(size_study)['size_study'] if not r['error']]
    ax = axes.pop(0)
    edges = [r['real_edges'] for r in study]
    ax.plot(edges, [r['train_step_median_s'] for r in study], 's-', label='train step (s)')
    ax.plot(edges, [r['peak_rss_gb'] for r in study], 'd--', label='peak RSS (GB)')
    for r in study:
      ax.annotate(f"{r['molecules']} ({r['mean_atoms']:.0f} atoms)",
                  (r['real_edges'], r['train_step_median_s']), fontsize=7)
    ax.set(xlabel=f"real edges per batch of {study[0]['batch_size']}", xscale='log',
           yscale='log', title='edm_zoo vs molecule size')
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
