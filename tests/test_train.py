"""Training: loss falls, resume is exact, 1 and 8 devices agree, one step on tfds mock data."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfg import build, train, train_state
from cfg.config_checks import ConfigError
from configs import smoke
from tests.tb_events import read_scalars
from tests.smoke_config import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def _synthetic_batches(num_classes, batch_size, size, seed=0):
  """Two-valued class-coded images: class c is a fixed random ±0.8 pattern; labels cycle."""
  rng = np.random.default_rng(seed)
  patterns = np.where(rng.random((num_classes, size, size, 1)) < 0.5, -0.8, 0.8).astype(np.float32)
  labels = np.arange(batch_size, dtype=np.int32) % num_classes
  return {'images': jnp.asarray(patterns[labels]), 'labels': jnp.asarray(labels)}


def test_tiny_model_loss_falls_on_synthetic_data():
  config = smoke_config()
  config.optim.update(dict(learning_rate=3e-3, warmup_steps=10))
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = train_state.init_state(config, model, optimizer)
  step = jax.jit(lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer, config=config))
  batch = _synthetic_batches(config.data.num_classes, 16, config.data.image_size)
  losses = []
  for _ in range(300):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  first, last = np.mean(losses[:30]), np.mean(losses[-30:])
  assert last < 0.5 * first, (first, last)
  assert int(state.step) == 300 and int(state.num_skipped) == 0


def test_resume_continues_exactly(tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  full = train.train_and_evaluate(smoke_config(num_steps=6), straight)
  train.train_and_evaluate(smoke_config(num_steps=3), resumed)
  again = train.train_and_evaluate(smoke_config(num_steps=6), resumed)
  assert int(again.step) == 6
  for a, b in zip(jax.tree.leaves((full.params, full.ema_params, full.opt_state)),
                  jax.tree.leaves((again.params, again.ema_params, again.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses_straight = dict(read_scalars(os.path.join(straight, 'tensorboard'))['loss'])
  losses_resumed = dict(read_scalars(os.path.join(resumed, 'tensorboard'))['loss'])
  assert sorted(losses_resumed) == [1, 2, 3, 4, 5, 6]
  for step in range(1, 7):
    assert losses_resumed[step] == losses_straight[step], step


def test_several_steps_per_call_train_like_one_and_act_at_the_calls_that_reach_each_event(tmp_path):
  """steps_per_call = 3 over 7 steps (calls end at 3, 6 and 7): the state of seven single steps, the
  mean of the same steps' losses logged at each call's end, checkpoints where a call passed a multiple of
  checkpoint_every; resuming at step 4 (not a call boundary) continues the same."""
  one, three, resumed = (str(tmp_path / name) for name in ('one', 'three', 'resumed'))
  single = train.train_and_evaluate(smoke_config(num_steps=7, checkpoint_every=2), one)
  config = smoke_config(num_steps=7, checkpoint_every=2)
  config.train.steps_per_call = 3
  scanned = train.train_and_evaluate(config, three)
  for a, b in zip(jax.tree.leaves((single.params, single.ema_params, single.opt_state)),
                  jax.tree.leaves((scanned.params, scanned.ema_params, scanned.opt_state))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  assert int(scanned.step) == 7
  losses = dict(read_scalars(os.path.join(one, 'tensorboard'))['loss'])
  logged = dict(read_scalars(os.path.join(three, 'tensorboard'))['loss'])
  assert sorted(logged) == [3, 6, 7]
  for end, steps in ((3, (1, 2, 3)), (6, (4, 5, 6)), (7, (7,))):
    np.testing.assert_allclose(logged[end], np.mean([losses[s] for s in steps]), rtol=1e-5)
  saved = sorted(int(name) for name in os.listdir(os.path.join(three, 'checkpoints')) if name.isdigit())
  assert saved[-2:] == [6, 7] and all(s in (3, 6, 7) for s in saved)  # calls that passed 2, 4 and 6; the last
  train.train_and_evaluate(smoke_config(num_steps=4), resumed)
  again = train.train_and_evaluate(config, resumed)  # calls end at 7 (4 → 7)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(again.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  with pytest.raises(ConfigError, match='steps_per_call'):
    bad = smoke_config()
    bad.train.steps_per_call = 0
    train.train_and_evaluate(bad, str(tmp_path / 'bad'))


def test_the_looped_and_the_unrolled_steps_equal_single_steps():
  """train_steps over 3 batches, as a loop (GPUs) and written out (the CPU's default), against 3 calls."""
  config = smoke_config()
  model, optimizer = build.model_from_config(config), build.optimizer_from_config(config.optim)
  state = train_state.init_state(config, model, optimizer)
  rng = np.random.default_rng(0)
  batches = {'images': jnp.asarray(rng.uniform(-1, 1, (3, 16, 28, 28, 1)), jnp.float32),
             'labels': jnp.asarray(rng.integers(0, 10, (3, 16)), jnp.int32)}
  one = jax.jit(lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer, config=config))
  single, losses = state, []
  for i in range(3):
    single, metrics = one(single, jax.tree.map(lambda x: x[i], batches))
    losses.append(float(metrics['loss']))
  for unroll in (False, True):
    run = jax.jit(lambda s, b: train.train_steps(s, b, model=model, optimizer=optimizer, config=config,
                                                 unroll=unroll))
    scanned, metrics = run(state, batches)
    np.testing.assert_allclose(np.asarray(metrics['loss']), losses, rtol=1e-5)
    # Adam divides each gradient by its running RMS, so where a gradient changes sign between steps a
    # float32 rounding difference in it (the loop and the three calls are compiled apart) moves the
    # parameter by a small fraction of one step of size lr instead of by ~1e-7 relative: atol is a
    # thousandth of lr. Largest difference seen: 7.4e-8 with jax 0.10.2, 1.4e-7 (one of 53,337 values)
    # with jax 0.12.0.1.
    atol = 1e-3 * config.optim.learning_rate
    for a, b in zip(jax.tree.leaves((single.params, single.ema_params)),
                    jax.tree.leaves((scanned.params, scanned.ema_params))):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=atol)
    assert int(scanned.step) == 3


def test_one_step_on_tfds_mock_cifar10(tmp_path):
  config = smoke_config(num_steps=1, batch_size=4)
  config.data.update(dict(name='cifar10', image_size=32, random_flip=True))
  config.model.attn_resolutions = (16,)  # feature-map sizes of a 32×32 input are 32 and 16
  with tfds.testing.mock_data(num_examples=16):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1
  assert np.isfinite(read_scalars(os.path.join(str(tmp_path), 'tensorboard'))['loss'][0][1])
  assert os.path.isdir(os.path.join(str(tmp_path), 'checkpoints', '1'))


def _train_losses_in_subprocess(workdir, num_devices, *flags):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  subprocess.run([sys.executable, 'launch.py', '--config=configs/smoke.py', f'--workdir={workdir}',
                  '--config.train.preview_every=0', '--config.train.log_every=1', *flags],
                 cwd=ROOT, env=env, check=True, capture_output=True)
  return [value for _, value in read_scalars(os.path.join(workdir, 'tensorboard'))['loss']]


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
  """The 8-device run also accumulates 2 micro-batches, each spread over all 8 devices."""
  one = _train_losses_in_subprocess(str(tmp_path / 'one'), 1)
  eight = _train_losses_in_subprocess(str(tmp_path / 'eight'), 8, '--config.train.grad_accum_steps=2')
  assert len(one) == len(eight) == smoke.get_config().train.num_steps
  np.testing.assert_allclose(eight, one, rtol=1e-5)


def test_nonfinite_update_is_skipped():
  config = smoke_config()
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = train_state.init_state(config, model, optimizer)
  batch = _synthetic_batches(config.data.num_classes, 4, config.data.image_size)
  batch['images'] = batch['images'].at[0, 0, 0, 0].set(jnp.nan)
  new_state, metrics = train.train_step(state, batch, model=model, optimizer=optimizer, config=config)
  assert not np.isfinite(float(metrics['loss']))
  assert int(new_state.num_skipped) == 1 and int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_trains_like_float32_with_float32_state():
  batch = _synthetic_batches(10, 16, 28)
  losses, states = {}, {}
  for dtype in ('float32', 'bfloat16'):
    config = smoke_config()
    config.model.compute_dtype = dtype
    model = build.model_from_config(config)
    optimizer = build.optimizer_from_config(config.optim)
    state = train_state.init_state(config, model, optimizer)
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer, config=config))
    losses[dtype] = []
    for _ in range(8):
      state, metrics = step(state, batch)
      losses[dtype].append(float(metrics['loss']))
    states[dtype] = state
  leaves = jax.tree.leaves((states['bfloat16'].params, states['bfloat16'].ema_params,
                            states['bfloat16'].opt_state))
  assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}  # int: Adam's count
  assert losses['bfloat16'] != losses['float32']  # bf16 was in effect
  # Early in training ε̂ is small next to ε, so rounding it to 8 mantissa bits moves the loss ~1e-5.
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=1e-3)


def test_ema_warmup_switch():
  """Warm-up: min(rate, (1 + n)/(10 + n)), so 0.999 is not reached by step 2,500; off: the rate at once."""
  np.testing.assert_allclose(train.ema_decay(0, 0.999), 0.1, rtol=1e-6)
  np.testing.assert_allclose(train.ema_decay(2500, 0.999), 2501 / 2510, rtol=1e-6)
  for step in (0, 2500):
    np.testing.assert_allclose(train.ema_decay(step, 0.999, warmup=False), 0.999, rtol=1e-7)


def _loss_and_grads(config, batch):
  model = build.model_from_config(config)
  state = train_state.init_state(config, model, build.optimizer_from_config(config.optim))
  return jax.jit(lambda params: train.loss_and_grads(
      params, batch, model=model, config=config, loss_key=jax.random.key(3),
      dropout_key=jax.random.key(4)))(state.params)


def _assert_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)))


def test_gradient_accumulation_gives_the_full_batch_update():
  """4 micro-batches of 4 (the same λ, ε and dropped labels) ≈ one batch of 16: loss, sums, gradient."""
  batch = _synthetic_batches(10, 16, 28)
  config = smoke_config()
  full = _loss_and_grads(config, batch)
  config.train.grad_accum_steps = 4
  accumulated = _loss_and_grads(config, batch)
  assert accumulated[0][1]['count/all'] == 16
  _assert_close(accumulated, full, rtol=1e-5)


def test_accumulation_that_does_not_split_the_batch_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match='grad_accum_steps=3 must be >= 1 and split the batch of 16'):
    train.train_and_evaluate(smoke_config(grad_accum_steps=3), str(tmp_path / 'run'))
  assert not os.listdir(tmp_path)


def test_remat_gives_the_same_gradients():
  batch = _synthetic_batches(10, 16, 28)
  config = smoke_config()
  config.model.dropout = 0.1  # the recomputed forward pass replays the same dropout masks
  plain = _loss_and_grads(config, batch)
  config.model.remat = True
  _assert_close(_loss_and_grads(config, batch), plain, rtol=1e-6)
