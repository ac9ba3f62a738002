# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # Guidance weight against sample quality, for two guidance methods
#
# A Jupytext notebook (`jupytext --to ipynb experiments/notebooks/guidance_tradeoff.py` opens it in
# Jupyter; `python experiments/notebooks/guidance_tradeoff.py` runs it headlessly, as `tests/test_api.py`
# does). It trains the tiny smoke model — or uses the workdir in `CFG_WORKDIR` — samples a grid of labels
# at several guidance weights with classifier-free guidance (Eq. 6) and with the guidance interval
# (Kynkäänniemi et al. 2024: guide only for λ in [λ_lo, λ_hi]), scores both with the evaluation mode's
# metrics, and plots distance against score per method (paper Fig. 4's trade-off).

# %%
import os
import tempfile

import matplotlib
matplotlib.use(os.environ.get('MPLBACKEND', 'Agg'))
import matplotlib.pyplot as plt
import numpy as np

from cfg import api, train
from configs import smoke

workdir = os.environ.get('CFG_WORKDIR')
if not workdir:  # train the smoke model: 6 steps, a minute on a laptop CPU
  workdir = tempfile.mkdtemp(prefix='cfg-smoke-')
  train.train_and_evaluate(smoke.get_config(), workdir)
out_dir = os.environ.get('CFG_NOTEBOOK_OUT', workdir)

# %% [markdown]
# Load the model: the config comes from the checkpoint. Sample `PER_CLASS` examples of every class at each weight
# w (w = 0 is the conditional model; the scale of later papers is s = 1 + w). One compiled program runs all
# weights with the same noise.

# %%
model = api.load(workdir)
PER_CLASS = int(os.environ.get('CFG_PER_CLASS', 10))  # more samples, less biased distances
labels = np.repeat(np.arange(model.config.data.num_classes), PER_CLASS)
weights = [0.0, 0.5, 1.0, 2.0, 4.0]
runs = {
    'cfg': model.sample(labels, w=weights),
    'interval': model.sample(labels, w=weights, method='interval', logsnr_lo=-6.0, logsnr_hi=4.0),
}
for name, run in runs.items():
  print(f'{name}: {run.images.shape[0]} weights × {run.images.shape[1]} images, NFE {run.nfe.total} per image')

# %% [markdown]
# Score every weight as the eval mode does (Fashion-MNIST: the project's classifier features, `fd_fmnist`
# and `is_fmnist`; these few samples give biased distances — the point is the shape of the curve).

# %%
tables = {name: api.score(run, config=model.config) for name, run in runs.items()}
for name, rows in tables.items():
  print(name, [(row['w'], round(row['fd_fmnist'], 1), round(row['is_fmnist'], 3)) for row in rows])

# %%
fig, ax = plt.subplots(figsize=(5, 4))
for name, rows in tables.items():
  ax.plot([r['is_fmnist'] for r in rows], [r['fd_fmnist'] for r in rows], marker='o', label=name)
  for r in rows:
    ax.annotate(f'{r["w"]:g}', (r['is_fmnist'], r['fd_fmnist']), fontsize=7)
ax.set_xlabel('is_fmnist (higher: more class-distinct)')
ax.set_ylabel('fd_fmnist (lower: closer to the data)')
ax.legend()
fig.tight_layout()
plot = os.path.join(out_dir, 'guidance_tradeoff.png')
fig.savefig(plot, dpi=100)
print('plot:', plot)
