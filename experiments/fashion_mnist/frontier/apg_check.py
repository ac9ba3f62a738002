"""Which part of APG fails with Heun: class accuracy and fd_fmnist of 100 balanced samples at w = 1 and 4,
APG with η ∈ {0, 1} × β ∈ {0, −0.5} against cfg, for ddim, dpmpp_2m and heun at NFE 16 (edm grid), and
heun with its guidance state advanced once per step (the trained frontier run, step 10,000; seed 1):

    python experiments/fashion_mnist/frontier/apg_check.py runs/fm_frontier/frontier > apg_check.txt

100 samples give a biased, noisy fd_fmnist (read it across rows, not against the frontier's 512-sample
cells); class accuracy is what the check is for. The JSON beside the output (`--json`) has the rows and
provenance.
"""
import argparse
import json
import time

import numpy as np

from cfg import api
from cfg.evaluation import provenance
from configs import fashion_mnist

CASES = {
    'cfg': dict(method='cfg'),
    'apg η=1 β=0 (cfg)': dict(method='apg', apg_eta=1.0, apg_beta=0.0),
    'apg η=0 β=0': dict(method='apg', apg_eta=0.0, apg_beta=0.0),
    'apg η=1 β=−0.5': dict(method='apg', apg_eta=1.0, apg_beta=-0.5),
    'apg η=0 β=−0.5 (the frontier\'s)': dict(method='apg', apg_eta=0.0, apg_beta=-0.5),
}
SAMPLERS = (('ddim', {}), ('dpmpp_2m', {}), ('heun', {}), ('heun', {'guide_state': 'step'}))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  start = time.time()
  model = api.load(args.workdir, step=10_000)
  config = fashion_mnist.get_config()
  labels = np.arange(100) % 10
  rows = []
  print('| sampler | guidance | w = 1: accuracy | fd_fmnist | w = 4: accuracy | fd_fmnist |')
  print('|---|---|---|---|---|---|')
  for sampler, extra in SAMPLERS:
    label = sampler + (', state per step' if extra else '')
    for name, settings in CASES.items():
      samples = model.sample(labels, w=[1.0, 4.0], sampler=sampler, grid='edm', nfe=16, seed=1, **extra,
                             **settings)
      scored = api.score(samples, config=config)
      rows += [dict(sampler=label, guidance=name, **r) for r in scored]
      print(f'| {label} | {name} | ' + ' | '.join(f'{r["class_accuracy"]:.2f} | {r["fd_fmnist"]:.1f}'
                                                  for r in scored) + ' |', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**provenance.provenance(wall_seconds=time.time() - start),
                 'samples_per_row': len(labels), 'rows': rows}, f, indent=1, default=float)


if __name__ == '__main__':
  main()
