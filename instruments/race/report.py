"""The race's tables and plot, from a `instruments/race/race.sh` folder.

  python instruments/race/report.py --race=RACE [--plot=PNG]

Converts both sides into run folders that `launch/compare.py` reads (RACE/runs/edm_zoo and
RACE/runs/original: config.json, metrics.jsonl with the train loss every 10th step and the
validation NLL of each snapshot, each line with its `elapsed_s` since the common start;
eval/report.json with the sample figures), draws them with
`launch/compare.py RACE/runs/edm_zoo RACE/runs/original --x=minutes`
(RACE/compare/compare.png, copied to --plot) and prints (and writes to RACE/race.md) the race
table and the sample table.
"""

import json
import os
import re
import shutil

from absl import app
from absl import flags
import numpy as np

from edm_zoo import runs

_RACE = flags.DEFINE_string('race', None, 'a instruments/race/race.sh output folder')
_PLOT = flags.DEFINE_string('plot', None, 'also copy the NLL-against-minutes plot here')

_LOG_LINE = re.compile(r'Epoch: (\d+), iter: (\d+)/\d+, Loss ([-\d.einf]+), NLL: ([-\d.einf]+)'
                       r'.*GradNorm: ([-\d.einf]+)')


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_run(folder, config, lines, report):
  os.makedirs(os.path.join(folder, 'eval'), exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f, indent=1)
  with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
    for line in sorted(lines, key=lambda r: (r['step'], 'val_nll' in r)):
      f.write(json.dumps(line) + '\n')
  if report is not None:
    with open(os.path.join(folder, 'eval', 'report.json'), 'w') as f:
      json.dump(report, f, indent=1)


def _original_train_lines(race):
  """Every 10th step of the original's own log (as ours logs), with its clock."""
  with open(os.path.join(race, 'original', 'stamps.json')) as f:
    stamps = json.load(f)
  clock = dict((int(s), float(t)) for s, t in stamps['stamps'])
  losses = []
  with open(os.path.join(race, 'original', 'train.log')) as f:
    for match in _LOG_LINE.finditer(f.read()):
      losses.append((float(match.group(3)), float(match.group(5))))
  lines = []
  for i, (loss, grad_norm) in enumerate(losses):
    step = i + 1  # The loss of step i + 1 is known when batch i + 1 is asked for.
    if step % 10 == 0 and step in clock:
      lines.append({'step': step, 'loss': loss, 'grad_norm': grad_norm,
                    'elapsed_s': clock[step]})
  return lines, stamps


def _samples(report):
  """The sample figures of an eval report (ours) or a file_metrics report (theirs)."""
  if report is None:
    return None
  m = report.get('metrics_intervals') or report.get('intervals') or {}
  out = {k: m.get(k) for k in ('molecules', 'atom_stability', 'atom_stability_lo',
                               'atom_stability_hi', 'mol_stability', 'mol_stability_lo',
                               'mol_stability_hi', 'validity', 'validity_lo', 'validity_hi',
                               'uniqueness')}
  out['molecules_per_hour'] = report.get('molecules_per_hour')
  c = report.get('chemistry') or {}
  if 'valency' in c:
    out['valency_reference'] = c['valency']['reference']['mol_stability']
    out['pb_all_but_energy'] = c.get('posebusters', {}).get('all_but_energy')
    out['mmff_drop'] = c.get('mmff', {}).get('energy_drop_kcal_mol')
  return out


def _pct(v, lo=None, hi=None):
  if v is None:
    return '-'
  text = f'{100 * v:.1f}'
  return text + (f' [{100 * lo:.1f}, {100 * hi:.1f}]' if lo is not None else '')


def _share(s):
  return '-' if not s or 'value' not in s else _pct(s['value'], s['lo'], s['hi'])


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  race = _RACE.value
  if not race or not os.path.isfile(os.path.join(race or '', 'race.json')):
    raise SystemExit('error: give --race=DIR (a instruments/race/race.sh output folder).')
  info = _read_json(os.path.join(race, 'race.json'))
  with open(os.path.join(race, 'ours', 'config.json')) as f:
    config = json.load(f)

  ours_lines = [{k: r[k] for k in ('step', 'loss', 'grad_norm', 'elapsed_s') if k in r}
                for r in _jsonl(os.path.join(race, 'ours', 'metrics.jsonl')) if 'loss' in r]
  ours_nll = _jsonl(os.path.join(race, 'ours_nll.jsonl'))
  orig_lines, stamps = _original_train_lines(race)
  orig_nll = _jsonl(os.path.join(race, 'original', 'nll.jsonl'))
  paired_path = os.path.join(race, 'original_nll_paired.jsonl')
  paired = _jsonl(paired_path) if os.path.exists(paired_path) else []
  val = lambda rows: [{k: r[k] for k in ('step', 'elapsed_s', 'val_nll', 'val_nll_molecules')}
                      for r in rows]
  reports = {'edm_zoo': _read_json(os.path.join(race, 'ours_eval_1000', 'report.json')),
             'original': _read_json(os.path.join(race, 'original_eval', 'report.json'))}
  sampling = _read_json(os.path.join(race, 'original', 'sampling.json'))
  if reports['original'] is not None:
    reports['original'] = {'metrics': {k: v for k, v in reports['original'].items()
                                       if isinstance(v, (int, float))},
                           'molecules_per_hour': sampling and sampling['molecules_per_hour'],
                           **reports['original']}
  _write_run(os.path.join(race, 'runs', 'edm_zoo'), config, ours_lines + val(ours_nll),
             reports['edm_zoo'])
  paired_lines = [{'step': r['step'], 'elapsed_s': r['elapsed_s'],
                   'val_nll_edm_zoo_estimator': r['val_nll']} for r in paired]
  _write_run(os.path.join(race, 'runs', 'original'), config,
             orig_lines + val(orig_nll) + paired_lines, reports['original'])
  with open(os.path.join(race, 'runs', 'original', 'original_argv.json'), 'w') as f:
    json.dump(stamps['argv'], f)
  table, _ = runs.compare([os.path.join(race, 'runs', 'edm_zoo'),
                           os.path.join(race, 'runs', 'original')],
                          os.path.join(race, 'compare'), x='minutes')
  if _PLOT.value:
    shutil.copy(os.path.join(race, 'compare', 'compare.png'), _PLOT.value)

  budget = info['budget_s']
  ours_steps = max(max(r['step'] for r in ours_lines), max(r['step'] for r in ours_nll))
  final_orig = orig_nll[-1]
  reached = [r for r in ours_nll if r['val_nll'] <= final_orig['val_nll']]

  def at(rows, minutes):
    before = [r for r in rows if r['elapsed_s'] <= 60 * minutes]
    return before[-1] if before else None

  def nll_at(rows, minutes):
    r = at(rows, minutes)
    return '-' if r is None else f"{r['val_nll']:.1f} (step {r['step']:,})"

  def best(rows):
    r = min(rows, key=lambda r: r['val_nll'])
    return f"{r['val_nll']:.1f} (minute {r['elapsed_s'] / 60:.1f}, step {r['step']:,})"

  first = lambda lines: min(lines, key=lambda r: r['step'])
  lines = [
      f'| | original EDM (its own code) | edm_zoo |', '|---|---|---|',
      f"| steps in {budget / 60:.0f} minutes | {stamps['steps']:,} | {ours_steps:,} |",
      f"| steps per second over the run | {stamps['steps'] / budget:.2f} | "
      f'{ours_steps / budget:.2f} |',
      f"| step 10 logged at (s; setup, compiles) | {first(orig_lines)['elapsed_s']:.0f} | "
      f"{first(ours_lines)['elapsed_s']:.0f} |"]
  for minutes in (5, 10, 20, 30, 45, budget / 60):
    lines.append(f'| validation NLL at minute {minutes:.0f} | {nll_at(orig_nll, minutes)} | '
                 f'{nll_at(ours_nll, minutes)} |')
  lines += [
      f'| best validation NLL | {best(orig_nll)} | {best(ours_nll)} |',
      f"| first minute at or below the original's final NLL ({final_orig['val_nll']:.1f}) "
      f"| {final_orig['elapsed_s'] / 60:.1f} | "
      + (f"{reached[0]['elapsed_s'] / 60:.1f} (step {reached[0]['step']:,})" if reached
         else 'not reached') + ' |']
  if paired:
    # Both through edm_zoo's estimator with the same draws: only the weights differ.
    final_p = paired[-1]
    reached_p = [r for r in ours_nll if r['val_nll'] <= final_p['val_nll']]
    for minutes in (10, 30, budget / 60):
      lines.append(f'| same estimator and draws: NLL at minute {minutes:.0f} | '
                   f'{nll_at(paired, minutes)} | {nll_at(ours_nll, minutes)} |')
    lines.append(
        f"| same estimator and draws: first minute at or below the original's final NLL "
        f"({final_p['val_nll']:.1f}) | {final_p['elapsed_s'] / 60:.1f} | "
        + (f"{reached_p[0]['elapsed_s'] / 60:.1f} (step {reached_p[0]['step']:,})"
           if reached_p else 'not reached') + ' |')
  nll_table = '\n'.join(lines)

  rows = [('original EDM, 1,000 steps', _samples(reports['original'])),
          ('edm_zoo, 1,000 steps', _samples(reports['edm_zoo'])),
          ('edm_zoo, 250 steps', _samples(_read_json(os.path.join(race, 'ours_eval_250',
                                                                  'report.json'))))]
  sample_lines = ['| model, steps | molecules | atom stability | molecule stability | validity '
                  '| uniqueness | valency, reference table (molecules) | PoseBusters '
                  'all-but-energy | MMFF drop, median kcal/mol | molecules/h (one core) |',
                  '|---|---|---|---|---|---|---|---|---|---|']
  for name, s in rows:
    if s is None:
      continue
    mmff = s.get('mmff_drop') or {}
    sample_lines.append(
        f"| {name} | {s['molecules']:,} | "
        f"{_pct(s['atom_stability'], s['atom_stability_lo'], s['atom_stability_hi'])} | "
        f"{_pct(s['mol_stability'], s['mol_stability_lo'], s['mol_stability_hi'])} | "
        f"{_pct(s['validity'], s['validity_lo'], s['validity_hi'])} | "
        f"{_pct(s['uniqueness'])} | {_share(s.get('valency_reference'))} | "
        f"{_share(s.get('pb_all_but_energy'))} | "
        f"{mmff.get('median', float('nan')):.3g} | "
        f"{s['molecules_per_hour'] or float('nan'):,.0f} |")
  text = '\n\n'.join([nll_table, '\n'.join(sample_lines), table])
  with open(os.path.join(race, 'race.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
