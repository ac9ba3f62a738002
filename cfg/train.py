"""Training (Algorithm 1) with EMA, data parallel over all devices, resumable from orbax checkpoints.

`train_and_evaluate(config, workdir)` is the entry point; `launch.py` only parses flags and calls it.
"""

import functools
import signal
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from cfg import build, data, files, generate, parallel
from cfg.config_checks import ConfigError, check_steps_per_call
from cfg.errors import ResumeMismatchError, TrainingDivergedError
from cfg.losses import loss_from_draws, metric_means, training_draws
from cfg.metric_writer import MetricWriter, Progress, image_grid
from cfg.train_state import TrainState, init_state, restore_or_init


def ema_decay(step, rate, *, warmup=True):
  """min(rate, (1 + n) / (10 + n)) with warm-up (a short run's EMA forgets its random init), else rate."""
  if not warmup:
    return jnp.asarray(rate, jnp.float32)
  return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def loss_and_grads(params, batch, *, model, config, loss_key, dropout_key):
  """((loss, metrics), ∇loss) of Algorithm 1 on `batch`.

  With k = train.grad_accum_steps > 1 the batch's draws (λ, ε, dropped labels: the same as for k = 1)
  are split into k micro-batches, rows i, i + k, … (so each is spread over every device), whose
  gradients a scan averages: only one micro-batch's activations are live. Dropout masks come from
  fold_in(dropout_key, i), so with dropout > 0 they differ from k = 1.
  """
  d, k = config.diffusion, config.train.grad_accum_steps
  draws = training_draws(key=loss_key, images=batch['images'], labels=batch['labels'], p_uncond=d.p_uncond,
                         null_label=config.data.num_classes, logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max)

  def micro_loss(params, micro, dropout_key):
    def denoise(z, logsnr, labels):
      return model.apply(params, z, logsnr, labels, train=True, rngs={'dropout': dropout_key})
    return loss_from_draws(denoise, micro, logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  if k == 1:
    return grad_fn(params, draws, dropout_key)
  micro_batches = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), draws)

  def accumulate(total, inputs):
    index, micro = inputs
    return jax.tree.map(jnp.add, total, grad_fn(params, micro, jax.random.fold_in(dropout_key, index))), None

  shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches), dropout_key)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  ((loss, metrics), grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro_batches))
  metrics = {name: value if name.startswith(('loss_sum/', 'count/')) else value / k  # sums stay sums
             for name, value in metrics.items()}
  return (loss / k, metrics), jax.tree.map(lambda g: g / k, grads)


def train_step(state, batch, *, model, optimizer, config):
  """One update; a non-finite loss or gradient leaves params, EMA and optimizer state unchanged."""
  key = jax.random.fold_in(state.rng, state.step)
  loss_key, dropout_key = jax.random.split(key)
  (loss, metrics), grads = loss_and_grads(state.params, batch, model=model, config=config,
                                          loss_key=loss_key, dropout_key=dropout_key)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay(state.step, config.optim.ema_rate, warmup=config.optim.ema_warmup)
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  keep_if_finite = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(params, state.params),
      ema_params=keep_if_finite(ema_params, state.ema_params),
      opt_state=keep_if_finite(opt_state, state.opt_state),
      num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
  metrics = dict(metrics, grad_norm=grad_norm, ema_decay=decay,
                 learning_rate=build.learning_rate_schedule(config.optim)(state.step))
  return new_state, metrics


def train_steps(state, batches, *, model, optimizer, config, unroll=None):
  """`train_step` over the leading axis of `batches` ([n, B, …]) in one lax.scan: (state, metrics [n]).

  With n = 1, the plain step (no loop around it). `unroll` (None: on the CPU only) writes the n steps out
  instead of looping: XLA:CPU ran the looped step 29× slower than the plain one (24.1 s vs 0.84 s a step,
  experiments/bench_train.py at batch 64, n = 2), unrolled as fast (0.76 s), for a longer compile.
  """
  step = functools.partial(train_step, model=model, optimizer=optimizer, config=config)
  if jax.tree.leaves(batches)[0].shape[0] == 1:
    state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
    return state, jax.tree.map(lambda x: x[None], metrics)
  if unroll is None:
    unroll = jax.default_backend() == 'cpu'
  return jax.lax.scan(step, state, batches, unroll=bool(unroll))


def _reached(every, before, after):
  """Whether a multiple of `every` lies in (before, after]: an event of a call that ran those steps."""
  return bool(every) and after // every > before // every


class _Preemption:
  """Turns SIGTERM into a step at which the run saves and exits cleanly.

  One process: a signal handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) hears SIGTERM on any process and names one step for all of them, so
  no process saves while another waits for it in the next step's collectives.
  """

  def __init__(self):
    self.requested = False
    self._multi_process = jax.process_count() > 1
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def reached(self, step):
    """Whether to save and stop after `step`; every process must call it at every step."""
    if self._multi_process:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self._multi_process:
      signal.signal(signal.SIGTERM, self._previous)


# Fields that decide which examples every step sees; a resume that changes one silently jumps or reorders the data.
DATA_ORDER_FIELDS = ('train.batch_size', 'seed')


def check_resume_config(saved, config, step):
  """Raises ResumeMismatchError when `config` changes a DATA_ORDER_FIELDS value of the checkpoint's config
  `saved` (a dict), unless `train.resume_accept_data_change` is set."""
  if config.train.resume_accept_data_change:
    return
  for field in DATA_ORDER_FIELDS:
    node = saved
    for key in field.split('.'):
      node = node.get(key) if isinstance(node, dict) else None
    now = config
    for key in field.split('.'):
      now = now[key]
    if node is not None and node != now:
      raise ResumeMismatchError(
          f'config.{field}={now!r}, but the checkpoint at step {step} was trained with {node!r}: resuming '
          'would change which examples the following steps see. Pass the same value, a new --workdir, or '
          '--config.train.resume_accept_data_change=True to accept the change.')


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final TrainState."""
  mesh = parallel.data_mesh()
  parallel.check_divisible(config.train.batch_size, mesh, 'config.train.batch_size')
  accum = config.train.grad_accum_steps
  if accum < 1 or config.train.batch_size % (accum * mesh.devices.size):
    raise ConfigError(f'config.train.grad_accum_steps={accum} must be >= 1 and split the batch of '
                      f'{config.train.batch_size} into micro-batches that divide over the {mesh.devices.size} '
                      f'devices: batch_size must be a multiple of grad_accum_steps × {mesh.devices.size}.')
  check_steps_per_call(config.train)
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state, checkpoints = restore_or_init(config, workdir, model=model, optimizer=optimizer, mesh=mesh)
  start_step = int(state.step)
  if start_step:
    check_resume_config(checkpoints.restore_config(start_step), config, start_step)
  is_writer = jax.process_index() == 0
  writer = MetricWriter(files.join(workdir, 'tensorboard'), enabled=is_writer)
  progress = Progress(total_steps=config.train.num_steps, start_step=start_step, enabled=is_writer)
  if start_step and is_writer:
    print(f'resuming from the checkpoint at step {start_step} in {workdir}', flush=True)

  per_call = config.train.steps_per_call
  stacked = parallel.stacked_batch_sharded(mesh)
  step_fn = parallel.jit(
      functools.partial(train_steps, model=model, optimizer=optimizer, config=config),
      in_shardings=(parallel.replicated(mesh), stacked),
      out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)), donate_argnums=0)
  preview = _Previewer(config, model, mesh, workdir) if config.train.preview_every else None
  batches = data.train_batches(
      config.data, global_batch_size=config.train.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  preemption = _Preemption()
  pending, skipped_seen, last_time = [], int(state.num_skipped), time.time()
  t = config.train
  try:
    step = start_step
    while step < t.num_steps:
      before, count = step, min(per_call, t.num_steps - step)
      local = [next(batches) for _ in range(count)]
      local = jax.tree.map(lambda *rows: np.stack(rows), *local)  # [n, local B, …]
      state, metrics = step_fn(state, parallel.global_batch(local, mesh, stacked))
      step += count
      pending.append(metrics)
      last = step == t.num_steps
      stop = preemption.reached(step)
      if _reached(t.log_every, before, step) or last or stop:
        scalars = _mean_metrics(pending)
        now = time.time()
        steps_logged = sum(int(np.size(m['loss'])) for m in pending)
        scalars['images_per_sec'] = steps_logged * t.batch_size / (now - last_time)
        scalars['skipped_updates'] = int(state.num_skipped)
        pending, last_time = [], now
        writer.scalars(step, scalars)
        progress.line(step, {k: scalars[k] for k in ('loss', 'grad_norm', 'images_per_sec')})
        skipped_seen = _check_nonfinite(config, state, skipped_seen, step)
      if preview and (_reached(t.preview_every, before, step) or last):
        preview(state.ema_params, step, writer)
      if _reached(t.checkpoint_every, before, step) or last or stop:
        _check_nonfinite(config, state, skipped_seen, step)
        writer.flush()  # a run killed later resumes at most here: its logged steps are all on disk
        checkpoints.save(state, config=config, data_position=step, force=stop)
      if stop:
        if is_writer:
          print(f'SIGTERM: saved the checkpoint at step {step}; exiting.', flush=True)
        break
  finally:
    preemption.restore()
    checkpoints.close()
    writer.close()
  return state


def _mean_metrics(pending):
  """Means over the logging interval; per-λ-bucket losses from their summed numerators and counts."""
  pending = jax.device_get(pending)  # each call's metrics, [steps of the call] per name
  stacked = {k: np.concatenate([np.reshape(m[k], -1) for m in pending]) for k in pending[0]}
  sums = {k: np.sum(v) for k, v in stacked.items() if k.startswith(('loss_sum/', 'count/'))}
  means = {k: float(np.mean(v)) for k, v in stacked.items() if k not in sums}
  return dict(means, **{k: float(v) for k, v in metric_means(sums).items()})


def _check_nonfinite(config, state, skipped_seen, step):
  """With on_nonfinite='stop', ends the run at the first skipped (non-finite) update."""
  skipped = int(state.num_skipped)
  if skipped > skipped_seen and config.train.on_nonfinite == 'stop':
    raise TrainingDivergedError(
        f'non-finite loss or gradient before step {step} ({skipped} update(s) skipped). The last '
        'checkpoint is intact. Lower config.optim.learning_rate or set config.train.on_nonfinite=skip.')
  return skipped


class _Previewer:
  """EMA samples for a few classes at every configured guidance weight → TensorBoard and PNG."""

  def __init__(self, config, model, mesh, workdir):
    self.config, self.mesh = config, mesh
    self.weights = [float(w) for w in config.guidance.weights]
    classes = min(config.data.num_classes, 10)
    per_class = config.train.preview_per_class
    self.labels = np.tile(np.arange(classes, dtype=np.int32), per_class)
    self.ncols = classes
    self.sample_fn = generate.make_sample_fn(model, config, mesh)
    self.directory = files.join(workdir, 'previews')
    self.is_writer = parallel.is_writer()

  def __call__(self, ema_params, step, writer):
    count = len(self.labels)
    size = -(-count // self.mesh.devices.size) * self.mesh.devices.size
    config = self.config.copy_and_resolve_references()
    config.sampling.batch_size = size
    (_, _, images), = generate.sample_batches(
        self.sample_fn, ema_params, mesh=self.mesh, config=config, weights=self.weights,
        num_samples=count, labels=self.labels)
    if not self.is_writer:
      return
    for w, per_weight in zip(self.weights, images):
      grid = image_grid(per_weight, ncols=self.ncols)
      writer.image(step, f'samples/w{w:g}', grid)
      files.save_png(self.directory / f'step{step:08d}_w{w:g}.png', grid)
