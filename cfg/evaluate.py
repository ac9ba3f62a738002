"""`launch.py --config.mode=eval` (or `sweep`): sample quality against guidance weight for one checkpoint.

All weights of `config.guidance.weights` are sampled by ONE compiled program (the sampler vmapped over
w) with the same noise and labels, in rounds of `config.sampling.batch_size` examples that go to disk,
so a killed evaluation continues from its last finished round and ends with the same numbers.

Feature space: Fashion-MNIST uses our classifier (`fd_fmnist`, `is_fmnist`, never called FID);
other datasets use the FID InceptionV3 (`fid`, `is`). Outputs under `<workdir>/eval/<tag>/`:
results.json, table.md, table.csv, tradeoff.png (distance against score, points labelled by w),
a sample grid and an ADM-format sample batch per w; plus TensorBoard scalars and hparams.

With several processes every one samples and scores its share of each round; process 0 decides which
rounds are left, writes every file, and sends the result rows to the others.
"""

import dataclasses
import hashlib
import json
from typing import Callable, Optional

import numpy as np

from cfg import data, files, generate, parallel
from cfg.config_checks import guidance_weights
from cfg.errors import MissingInputError
from cfg.evaluation import adm_io, metrics, rounds, tables
from cfg.metric_writer import MetricWriter, image_grid
from cfg.trained import load_ema_params, make_sample_fn


@dataclasses.dataclass
class FeatureSpace:
  """How samples are scored: features_and_logits(uint8 images) and the reference set's statistics."""
  name: str  # 'fmnist' | 'inception'
  features_and_logits: Callable
  reference: dict  # mu, sigma, features (features may be None: no precision / recall)
  labels_meaningful: bool  # logits' classes are the dataset's classes (class accuracy makes sense)


def feature_space(config):
  """The feature network and reference statistics `config.eval` names."""
  e = config.eval
  if config.data.name == 'fashion_mnist':
    from cfg.evaluation import feature_net
    net = feature_net.load_feature_net(e.feature_net_dir)
    reference = feature_net.reference_stats(net, config.data)
    return FeatureSpace('fmnist', net.features_and_logits, reference, labels_meaningful=True)
  from cfg.evaluation import inception
  if e.inception_weights is None:
    raise MissingInputError(
        'config.eval.inception_weights is not set: point it at the converted FID Inception .npz '
        f'(download {inception.TORCH_WEIGHTS_URL}, then `{inception.CONVERT_COMMAND}`).')
  variables = inception.load_inception_params(e.inception_weights)
  score = lambda images: inception.compute_features(
      variables, (images[i:i + 100] for i in range(0, len(images), 100)), batch_size=100)
  if e.reference_batch:
    reference = adm_io.reference_batch_statistics(e.reference_batch, variables)
  else:
    cache = files.path(e.inception_weights).parent / (
        f'reference_{config.data.name}_{data.eval_split(config.data)}.npz')
    reference = adm_io.inception_reference_statistics(
        config.data, split=data.eval_split(config.data), variables=variables, cache_path=cache)
  return FeatureSpace('inception', score, reference, labels_meaningful=False)


def _sampling_choices(config):
  """What else changes the samples, beyond the paper's cfg + ancestral: [] for those, so their tags
  stay as they were. DDIM's tag changed when its wasted last call was dropped ('ddim: T-1 steps')."""
  s, g = config.sampling, config.guidance
  choices = {}
  if s.sampler != 'ancestral':
    choices.update(solver_version='ode: T-1 steps, x = z_T/alpha_T', eta=s.eta)
  if s.grid != 'uniform_u':
    choices['grid'] = s.grid
  if g.method != 'cfg':
    choices.update(method=g.method, params=generate.guidance_params(config)._asdict(),
                   schedule=g.schedule, guide=[g.guide_workdir, g.guide_step])
  return [choices] if choices else []


def evaluation_tag(config, step, weights):
  """A folder name that changes whenever the samples would."""
  s = config.sampling
  digest = hashlib.sha256(json.dumps([list(weights), s.clip_x, s.variance_interp]
                                     + _sampling_choices(config)).encode()).hexdigest()
  method = '' if config.guidance.method == 'cfg' else f'_{config.guidance.method}'
  return (f'step{step}_{s.sampler}{generate.num_steps(config)}{method}_n{s.num_samples}_seed{s.seed}'
          f'_{digest[:8]}')


def score_weights(space, weights, features, logits, labels):
  """[{w, s, metric: value, …}] per guidance weight; names say which feature space they use."""
  is_fmnist = space.name == 'fmnist'
  fd_name, is_name = ('fd_fmnist', 'is_fmnist') if is_fmnist else ('fid', 'is')
  rows = []
  for w, feats, lgts in zip(weights, features, logits):
    mu, sigma = metrics.feature_statistics(feats)
    row = {'w': w, 's': 1.0 + w,
           fd_name: metrics.frechet_distance(mu1=mu, sigma1=sigma, mu2=space.reference['mu'],
                                             sigma2=space.reference['sigma']),
           is_name: metrics.inception_score(lgts, splits=min(10, len(lgts)))}
    if space.reference.get('features') is not None:
      precision, recall = metrics.precision_recall(real_features=space.reference['features'],
                                                   fake_features=feats, k=3)
      row['precision'], row['recall'] = float(precision), float(recall)
    if space.labels_meaningful:
      row['class_accuracy'] = float(np.mean(np.argmax(lgts, axis=-1) == labels))
    rows.append(row)
  return rows


def run(config, workdir, *, on_round: Optional[Callable[[int], None]] = None):
  """Evaluates the checkpoint at every guidance weight; returns the list of result rows."""
  mesh = parallel.data_mesh()
  model, params, step = load_ema_params(config, workdir, mesh, step=config.eval.checkpoint_step)
  weights = guidance_weights(config)
  space = feature_space(config)
  directory = files.join(workdir, 'eval', evaluation_tag(config, step, weights))
  rounds.open_rounds(directory, {'weights': weights, 'step': step,
                                 'sampling': config.sampling.to_dict(), 'feature_space': space.name})
  print(generate.describe_evaluations(config), flush=True)
  sample_fn = make_sample_fn(model, config, mesh)
  batch_size, total = config.sampling.batch_size, config.sampling.num_samples
  num_rounds = -(-total // batch_size)

  def make_round(index):
    (ids, labels, images), = generate.sample_batches(
        sample_fn, params, mesh=mesh, config=config, weights=weights,
        num_samples=min(total, (index + 1) * batch_size), first=index * batch_size)
    scored = [space.features_and_logits(per_weight) for per_weight in images]
    print(f'eval round {index + 1}/{num_rounds}: {len(ids)} samples × {len(weights)} weights', flush=True)
    return {'ids': ids, 'labels': labels, 'images': images,
            'features': np.stack([f for f, _ in scored]), 'logits': np.stack([l for _, l in scored])}

  rounds.run_rounds(directory, num_rounds, make_round, on_round=on_round)

  def score_and_write():  # process 0
    parts = rounds.load_rounds(directory, num_rounds)
    labels = np.concatenate(parts['labels'])
    images, features, logits = (np.concatenate(parts[k], axis=1) for k in ('images', 'features', 'logits'))
    rows = score_weights(space, weights, features, logits, labels)
    _write_outputs(config, directory, workdir, step, rows, images, labels)
    return rows

  rows = parallel.decided_by_process_zero(score_and_write)
  parallel.sync('cfg.evaluate.written')
  return rows


def _write_outputs(config, directory, workdir, step, rows, images, labels):
  nfe = generate.evaluations(config)
  info = {'step': step, 'sampler': config.sampling.sampler, 'num_steps': generate.num_steps(config),
          'nfe_per_image': nfe.total, 'nfe_main': nfe.main, 'nfe_guiding': nfe.ref,
          'method': config.guidance.method, 'grid': config.sampling.grid,
          'num_samples': config.sampling.num_samples, 'p_uncond': config.diffusion.p_uncond,
          'seed': config.sampling.seed}
  tables.write_tables(directory, rows, info)
  files.write_text(directory / 'table.md',  # the table with its sampler, T and NFE above it
                    f'{generate.describe_evaluations(config)}\n\n{tables.markdown_table(rows)}\n')
  tables.tradeoff_plot(directory / 'tradeoff.png', {'this run': rows},
                       title=f'{config.data.name}, step {step}, {config.sampling.sampler} '
                       f'T={info["num_steps"]} NFE={nfe.total}, {config.guidance.method}')
  order = np.argsort(labels[:100], kind='stable')
  for row, per_weight in zip(rows, images):
    w = row['w']
    files.save_png(directory / f'samples_w{w:g}.png', image_grid(per_weight[:100][order], ncols=10))
    if config.eval.save_samples:
      adm_io.write_sample_batch(directory / f'samples_w{w:g}.npz', per_weight, labels)
  writer = MetricWriter(files.join(workdir, 'tensorboard'))
  for row in rows:
    writer.scalars(step, {f'eval/w{row["w"]:g}/{k}': v for k, v in row.items() if k not in ('w', 's')})
    writer.hparams(dict(info, w=row['w']), {f'hparam/{k}': v for k, v in row.items() if k not in ('w', 's')},
                   name=f'eval_step{step}_w{row["w"]:g}')
  writer.close()
  print(tables.markdown_table(rows), flush=True)
  print(f'results: {directory}', flush=True)
