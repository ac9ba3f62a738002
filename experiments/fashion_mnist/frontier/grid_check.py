"""RMS distance of x̂ from a 256-step DDIM solve from the same noise, on the edm grid without and with its
σ_max = 80 cap (the trained frontier run, step 10,000, 64 balanced labels, w = 0.3, T = 9):

    python experiments/fashion_mnist/frontier/grid_check.py runs/fm_frontier/frontier
"""
import functools
import sys
import jax, jax.numpy as jnp, numpy as np
from cfg import api, samplers, solvers

m = api.load(sys.argv[1], step=10000)
labels = jnp.arange(64) % 10
key = jax.random.PRNGKey(0)
old_grid = functools.partial(solvers.edm_grid, sigma_max=np.inf)  # the uncapped grid: σ_1 = e^{−λ_min/2}
def run(solver, T, grid):
  f = jax.jit(lambda: samplers.sample(m.denoise, key=key, labels=labels, image_shape=(28, 28, 1), num_steps=T,
                                      null_label=10, guidance_weight=0.3, solver=solver, grid=grid, clip_x=True))
  return np.asarray(f())
for name, grid in (('uncapped', old_grid), ('capped', 'edm')):
  ref = run('ddim', 257, grid)
  for solver in ('ddim', 'heun', 'dpmpp_2m'):
    x = run(solver, 9, grid)
    print(f'{name:9s} {solver:9s} T=9 rms vs ddim T=257 on the same grid: {np.sqrt(np.mean((x - ref)**2)):.4f}', flush=True)
