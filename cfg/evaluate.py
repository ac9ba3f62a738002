"""`launch.py --config.mode=eval` (or `sweep`): sample quality against guidance weight for one checkpoint.

All weights of `config.guidance.weights` are sampled by ONE compiled program (the sampler vmapped over
w) with the same noise and labels, in rounds of `config.sampling.batch_size` examples that go to disk,
so a killed evaluation continues from its last finished round and ends with the same numbers.

Feature spaces (`feature_spaces`): Fashion-MNIST uses our classifier (`fd_fmnist`, `is_fmnist`, never
called FID) and, where eval.inception_weights is set, the FID InceptionV3 too; other datasets use the
Inception (`fid`, `is`, `sfid`); eval.fd_dinov2 adds DINOv2 (`fd_dinov2`). Every Fréchet distance d has
its 95% bootstrap interval (d_lo, d_hi) and FD∞ (d_inf); the main space's reference features give the
ADM-style precision / recall (k = 3) and PRDC (k = 5). Outputs under `<workdir>/eval/<tag>/`:
results.json, table.md, table.csv, tradeoff.png (distance against score, points labelled by w),
a sample grid and an ADM-format sample batch per w; plus TensorBoard scalars and hparams. results.json
also holds `provenance`: command, commit, machine, wall time, label protocol, reference, config, and the
fingerprints of the feature networks' weights and of the checkpoint's EMA params, which the rounds'
manifest holds too (resuming with any of them changed is refused).

With several processes every one samples and scores its share of each round; process 0 decides which
rounds are left, writes every file, and sends the result rows to the others.
"""

import dataclasses
import hashlib
import json
import time
from typing import Callable, Optional

import numpy as np

from cfg import data, files, generate, parallel, solvers
from cfg.config_checks import guidance_weights
from cfg.errors import MissingInputError
from cfg.checkpoints import checksums
from cfg.evaluation import adm_io, metrics, provenance, rounds, tables
from cfg.metric_writer import MetricWriter, image_grid
from cfg.trained import load_ema_params, make_sample_fn


@dataclasses.dataclass
class FeatureSpace:
  """How samples are scored: score(uint8 images) → {'features', 'logits'[, 'spatial']}, the reference
  set's statistics, and a fingerprint of the network's weights (rounds made with others are refused)."""
  name: str  # 'fmnist' | 'inception' | 'dinov2'
  score: Callable
  reference: dict  # mu, sigma; features (None: no precision / recall); mu_spatial, sigma_spatial (sFID)
  labels_meaningful: bool  # logits' classes are the dataset's classes (class accuracy makes sense)
  fingerprint: str
  reference_source: str  # which split or reference batch the statistics come from


def reference_split(config):
  """eval.reference_split, or the dataset's standard one: train for CIFAR-10 and ImageNet (ADM's
  reference batches and EDM's CIFAR-10 statistics come from the training set); test for Fashion-MNIST,
  whose feature network was trained on the training split and measured on the test split."""
  if config.eval.reference_split is not None:
    return config.eval.reference_split
  return 'test' if config.data.name == 'fashion_mnist' else 'train'


def _feature_batch_size(config):
  """Images per Inception / DINOv2 call: at most 100, at most a round (small runs compile small)."""
  return min(100, config.sampling.batch_size)


def _batches(images, batch_size):
  return (images[i:i + batch_size] for i in range(0, len(images), batch_size))


def feature_spaces(config):
  """The feature spaces `config.eval` names, the main one first (its neighbours give precision / recall):
  Fashion-MNIST's classifier, then FID Inception where eval.inception_weights is set (on Fashion-MNIST
  too: grayscale repeated to 3 channels); other datasets Inception only; then DINOv2 if eval.fd_dinov2."""
  spaces = []
  if config.data.name == 'fashion_mnist':
    spaces.append(fmnist_space(config))
  if config.data.name != 'fashion_mnist' or config.eval.inception_weights is not None:
    spaces.append(inception_space(config))
  if config.eval.fd_dinov2:
    spaces.append(dinov2_space(config))
  return spaces


def fmnist_space(config):
  from cfg.evaluation import feature_net
  split = reference_split(config)
  net = feature_net.load_feature_net(config.eval.feature_net_dir)
  reference = feature_net.reference_stats(net, config.data, split=split)
  score = lambda images: dict(zip(('features', 'logits'), net.features_and_logits(images)))
  return FeatureSpace('fmnist', score, reference, True, adm_io.weights_fingerprint(net.variables),
                      f'{config.data.name} {split} split')


def _missing_weights(problem, network_module):
  """The error for an unset weights path: what is missing, then the download and the convert command."""
  return MissingInputError(f'{problem} (download {network_module.TORCH_WEIGHTS_URL}, then '
                           f'`{network_module.CONVERT_COMMAND}`).')


def inception_space(config):
  from cfg.evaluation import inception
  e = config.eval
  if e.inception_weights is None:
    raise _missing_weights('config.eval.inception_weights is not set: point it at the converted FID '
                           'Inception .npz', inception)
  variables = inception.load_inception_params(e.inception_weights)
  batch_size = _feature_batch_size(config)

  def score(images):
    pool3, logits, spatial = inception.compute_features(variables, _batches(images, batch_size),
                                                        batch_size=batch_size, spatial=True)
    return {'features': pool3, 'logits': logits, 'spatial': spatial}

  if e.reference_batch:
    reference = adm_io.reference_batch_statistics(e.reference_batch, variables, batch_size=batch_size)
    source = f'reference batch {e.reference_batch}'
  else:
    split = reference_split(config)
    cache = files.path(e.inception_weights).parent / f'reference_{config.data.name}_{split}.npz'
    reference = adm_io.inception_reference_statistics(config.data, split=split, variables=variables,
                                                      cache_path=cache, batch_size=batch_size)
    source = f'{config.data.name} {split} split'
  return FeatureSpace('inception', score, reference, False, adm_io.weights_fingerprint(variables), source)


def dinov2_space(config):
  """FD_DINOv2's network and reference statistics (EDM2's recipe)."""
  e = config.eval
  from cfg.evaluation import dinov2
  if e.dinov2_weights is None:
    raise _missing_weights('config.eval.fd_dinov2=True needs config.eval.dinov2_weights, the converted '
                           'DINOv2 ViT-L/14 .npz', dinov2)
  variables, architecture = dinov2.load_dinov2_weights(e.dinov2_weights)
  batch_size = _feature_batch_size(config)
  features = lambda images: dinov2.compute_features(variables, _batches(images, batch_size),
                                                    batch_size=batch_size, architecture=architecture)
  fingerprint = adm_io.weights_fingerprint(variables)
  if e.reference_batch:
    if 'arr_0' not in adm_io.array_names(e.reference_batch):
      raise MissingInputError(f'config.eval.fd_dinov2 needs the images of the reference batch '
                              f'{e.reference_batch} (arr_0); it holds only Inception statistics.')
    reference_features = np.concatenate([features(images) for images in adm_io.iterate_npz_array(
        e.reference_batch, 'arr_0', batch_size=batch_size)])
    mu, sigma = metrics.feature_statistics(reference_features)
    reference, source = {'mu': mu, 'sigma': sigma}, f'reference batch {e.reference_batch}'
  else:
    split = reference_split(config)
    cache = files.path(e.dinov2_weights).parent / f'reference_dinov2_{config.data.name}_{split}.npz'
    reference = adm_io.reference_statistics(config.data, split=split, features_fn=features,
                                            features_id=f'dinov2:{fingerprint}', cache_path=cache)
    source = f'{config.data.name} {split} split'
  return FeatureSpace('dinov2', lambda images: {'features': features(images)}, reference, False,
                      fingerprint, source)


def _sampling_choices(config):
  """What else changes the samples, beyond the paper's cfg + ancestral: [] for those, so their tags
  stay as they were. DDIM's tag changed when its wasted last call was dropped ('ddim: T-1 steps'),
  DPM-Solver++'s and Heun's when their last step became first order, the edm grid's when it was
  capped at EDM's σ_max."""
  s, g = config.sampling, config.guidance
  choices = {}
  if s.sampler != 'ancestral':
    choices.update(solver_version='ode: T-1 steps, x = z_T/alpha_T', eta=s.eta)
    if s.sampler in ('dpmpp_2m', 'heun'):
      choices['solver_version'] += ', last step first order'
    if generate.guide_state_per_step(config):
      choices['guide_state'] = 'step'
  if s.grid != 'uniform_u':
    choices['grid'] = s.grid if s.grid != 'edm' else f'edm, sigma_max {solvers.EDM_SIGMA_MAX:g}'
  if s.labels != 'uniform':  # uniform was the only protocol before sampling.labels
    choices['labels'] = s.labels
  if g.method != 'cfg':
    choices.update(method=g.method, params=generate.guidance_params(config)._asdict(),
                   schedule=g.schedule, guide=[g.guide_workdir, g.guide_step])
  return [choices] if choices else []


def sampling_settings(config):
  """config.sampling as a rounds manifest records it: all but max_network_batch. How the network calls are
  split changes the samples by float32 summation order only, as the device count does (which no manifest
  records either), so rounds sampled either way continue each other."""
  return {key: value for key, value in config.sampling.to_dict().items() if key != 'max_network_batch'}


def evaluation_tag(config, step, weights):
  """A folder name that changes whenever the samples would."""
  s = config.sampling
  digest = hashlib.sha256(json.dumps([list(weights), s.clip_x, s.variance_interp]
                                     + _sampling_choices(config)).encode()).hexdigest()
  method = '' if config.guidance.method == 'cfg' else f'_{config.guidance.method}'
  return (f'step{step}_{s.sampler}{generate.num_steps(config)}{method}_n{s.num_samples}_seed{s.seed}'
          f'_{digest[:8]}')


def frechet_columns(name, features, reference, *, resamples):
  """{name: FD, name_lo / name_hi: its 95% basic-bootstrap interval, name_inf: FD∞} (reference fixed)."""
  mu_ref, sigma_ref = reference['mu'], reference['sigma']
  interval = metrics.frechet_distance_bootstrap(features=features, mu_ref=mu_ref, sigma_ref=sigma_ref,
                                                num_resamples=resamples, seed=0)
  infinity = metrics.frechet_distance_infinity(features=features, mu_ref=mu_ref, sigma_ref=sigma_ref,
                                               seed=0)
  return {name: metrics.frechet_distance_to_reference(features=features, mu_ref=mu_ref,
                                                      sigma_ref=sigma_ref),
          f'{name}_lo': interval.low, f'{name}_hi': interval.high, f'{name}_inf': infinity.fd_infinity}


NAMES = {'fmnist': ('fd_fmnist', 'is_fmnist'), 'inception': ('fid', 'is'), 'dinov2': ('fd_dinov2', None)}


def round_key(spaces, space, name):
  """The rounds' array name of a space's output: the main space's as they always were ('features',
  'logits'), the others prefixed ('inception_spatial', 'dinov2_features')."""
  return name if space is spaces[0] else f'{space.name}_{name}'


def _reference_radii(space, *, k):
  """The reference features' k-NN radii, computed once per feature space (every weight shares them)."""
  key = f'_manifold_radii_k{k}'
  if key not in space.reference:
    space.reference[key] = metrics.manifold_radii(space.reference['features'], k=k)
  return space.reference[key]


def space_columns(space, scored, labels, *, resamples, main):
  """The columns one feature space gives one guidance weight; scored: its {'features', …} [N, …]."""
  fd_name, is_name = NAMES[space.name]
  feats = scored['features']
  row = frechet_columns(fd_name, feats, space.reference, resamples=resamples)
  if is_name is not None:
    row[is_name] = metrics.inception_score(scored['logits'], splits=min(10, len(feats)))
  if space.reference.get('mu_spatial') is not None and 'spatial' in scored:
    row['sfid'] = metrics.frechet_distance_to_reference(
        features=scored['spatial'], mu_ref=space.reference['mu_spatial'],
        sigma_ref=space.reference['sigma_spatial'])
  real = space.reference.get('features')
  if main and real is not None and len(feats) > 5:  # k-NN radii need more than k = 3 and 5 samples
    precision, recall = metrics.precision_recall(real_features=real, fake_features=feats, k=3,
                                                 real_radii=_reference_radii(space, k=3))
    row['precision'], row['recall'] = float(precision), float(recall)
    prdc = metrics.prdc(real_features=real, fake_features=feats, k=5, real_radii=_reference_radii(space, k=5))
    row.update(precision_k5=prdc['precision'], recall_k5=prdc['recall'], density=prdc['density'],
               coverage=prdc['coverage'])
  if space.labels_meaningful:
    row['class_accuracy'] = float(np.mean(np.argmax(scored['logits'], axis=-1) == labels))
  return row


def score_images(spaces, images):
  """{round_key: [K, N, …]} of every space's outputs for uint8 images [K, N, H, W, C] (K weights)."""
  arrays = {}
  for space in spaces:
    scored = [space.score(per_weight) for per_weight in images]
    arrays.update({round_key(spaces, space, name): np.stack([s[name] for s in scored]) for name in scored[0]})
  return arrays


def score_weights(spaces, weights, stacked, labels, *, resamples):
  """[{w, s, metric: value, …}] per guidance weight; names say which feature space they use.

  stacked: the rounds' arrays concatenated over samples, [K, N, …] per `round_key`.
  """
  rows = []
  for index, w in enumerate(weights):
    row = {'w': w, 's': 1.0 + w}
    for space in spaces:
      scored = {name: stacked[round_key(spaces, space, name)][index]
                for name in ('features', 'logits', 'spatial') if round_key(spaces, space, name) in stacked}
      row.update(space_columns(space, scored, labels, resamples=resamples, main=space is spaces[0]))
    rows.append(row)
  return rows


def checkpoint_fingerprint(params, step):
  """{step, sha256 over the EMA params' word sums} (cfg.checkpoints.checksums: exact, layout-free)."""
  return {'step': step, 'ema_params_sha256': provenance.json_fingerprint(checksums(params))}


def refined_weights(weights, distances):
  """The midpoints between the weight of the lowest distance and its neighbours among `weights` (one
  side at the grid's edge), leaving out any already there: the next pass of eval.refine."""
  order = sorted(range(len(weights)), key=lambda i: weights[i])
  ws = [weights[i] for i in order]
  best = min(range(len(ws)), key=lambda i: (distances[order[i]], ws[i]))
  sides = [ws[j] for j in (best - 1, best + 1) if 0 <= j < len(ws)]
  return [m for m in (round((ws[best] + w) / 2, 10) for w in sides) if m not in ws]


def _pass_arrays(directory, num_rounds):
  """A pass's rounds on disk as [K, N, …] arrays per name (ids and labels [N])."""
  parts = rounds.load_rounds(directory, num_rounds)
  return {k: np.concatenate(v, axis=0 if k in ('ids', 'labels') else 1) for k, v in parts.items()}


def sampled_by(directory, passes, num_rounds):
  """{round name (`round_<i>`, `refine<k>/round_<i>`): what sampled it} for every round of `passes`.

  From each round's record (`rounds.round_records`). A round written before rounds had records takes what
  the evaluation's previous results.json says of it: its `sampled_by` entry, else that file's own commit,
  machine and date (`seconds`: None), the process that last wrote it; with no previous results.json, None.
  """
  previous = files.join(directory, 'results.json')
  previous = files.read_json(previous)['provenance'] if previous.exists() else None
  fields = ('command', 'commit', 'tree_dirty', 'date', 'machine')
  out = {}
  for folder, _ in passes:
    prefix = '' if folder == directory else f'{folder.name}/'
    for index, record in enumerate(rounds.round_records(folder, num_rounds)):
      name = f'{prefix}round_{index:05d}'
      if record is not None:
        out[name] = {**{k: record.get(k) for k in fields}, 'seconds': record.get('wall_seconds')}
      elif previous is None:
        out[name] = None
      else:
        out[name] = (previous.get('sampled_by') or {}).get(name) or {
            **{k: previous.get(k) for k in fields}, 'seconds': None}
  return out


def _main_distances(space, arrays):
  """The main space's Fréchet distance at each weight of a pass (no interval): what refinement ranks."""
  return [metrics.frechet_distance_to_reference(features=f, mu_ref=space.reference['mu'],
                                                sigma_ref=space.reference['sigma']) for f in arrays['features']]


def run(config, workdir, *, on_round: Optional[Callable[[int], None]] = None):
  """Evaluates the checkpoint at every guidance weight, then (eval.refine > 0) at the midpoints around
  the best one, pass after pass; returns the result rows of all weights, in order of w.

  Every pass samples the same examples with the same noise. A pass is a folder of rounds (the first is
  the evaluation's own folder, pass k its refine<k>/), so a killed evaluation resumes in any pass.
  """
  started = time.time()
  mesh = parallel.data_mesh()
  model, params, step = load_ema_params(config, workdir, mesh, step=config.eval.checkpoint_step)
  weights = guidance_weights(config)
  spaces = feature_spaces(config)
  evaluators = {space.name: space.fingerprint for space in spaces}
  checkpoint = checkpoint_fingerprint(params, step)
  directory = files.join(workdir, 'eval', evaluation_tag(config, step, weights))
  print(generate.describe_evaluations(config), flush=True)
  sample_fn = make_sample_fn(model, config, mesh)
  batch_size, total = config.sampling.batch_size, config.sampling.num_samples
  num_rounds = -(-total // batch_size)
  passes = []  # (folder, weights) of each pass done

  def evaluate_pass(folder, pass_weights):
    rounds.open_rounds(folder, {'weights': pass_weights, 'step': step,
                                'sampling': sampling_settings(config), 'feature_space': spaces[0].name,
                                'evaluators': evaluators, 'checkpoint': checkpoint})

    def make_round(index):
      (ids, labels, images), = generate.sample_batches(
          sample_fn, params, mesh=mesh, config=config, weights=pass_weights,
          num_samples=min(total, (index + 1) * batch_size), first=index * batch_size)
      arrays = {'ids': ids, 'labels': labels, 'images': images, **score_images(spaces, images)}
      print(f'eval round {index + 1}/{num_rounds}: {len(ids)} samples × {len(pass_weights)} weights'
            + (f' (refinement at w = {", ".join(f"{w:g}" for w in pass_weights)})' if passes else ''),
            flush=True)
      return arrays

    resumed = len(rounds.run_rounds(folder, num_rounds, make_round, on_round=on_round))
    passes.append((folder, tuple(pass_weights)))
    return resumed

  resumed = evaluate_pass(directory, weights)
  for index in range(config.eval.refine):
    def next_weights():  # process 0
      arrays = [_pass_arrays(folder, num_rounds) for folder, _ in passes]
      return refined_weights([w for _, ws in passes for w in ws],
                             [d for a in arrays for d in _main_distances(spaces[0], a)])
    extra = parallel.decided_by_process_zero(next_weights)
    if not extra:
      break
    resumed += evaluate_pass(files.join(directory, f'refine{index + 1}'), extra)

  def score_and_write():  # process 0
    arrays = [_pass_arrays(folder, num_rounds) for folder, _ in passes]
    labels = arrays[0]['labels']
    assert all(np.array_equal(a['ids'], arrays[0]['ids']) for a in arrays), 'passes of other examples'
    all_weights = [w for _, ws in passes for w in ws]
    order = np.argsort(all_weights, kind='stable')
    stacked = {k: np.concatenate([a[k] for a in arrays], axis=0)[order]
               for k in arrays[0] if k not in ('ids', 'labels')}
    rows = score_weights(spaces, [all_weights[i] for i in order], stacked, labels,
                         resamples=config.eval.bootstrap_resamples)
    record = {'labels': config.sampling.labels,
              'reference': {space.name: space.reference_source for space in spaces}, 'evaluators': evaluators,
              'checkpoint': checkpoint, 'rounds_resumed': resumed, 'config': config.to_dict(),
              'weight_passes': [list(ws) for _, ws in passes],
              'sampled_by': sampled_by(directory, passes, num_rounds),  # the rounds; the rest: this process
              **provenance.provenance(wall_seconds=time.time() - started)}
    _write_outputs(config, directory, workdir, step, rows, stacked['images'], labels, record)
    return rows

  rows = parallel.decided_by_process_zero(score_and_write)
  parallel.sync('cfg.evaluate.written')
  return rows


def _write_outputs(config, directory, workdir, step, rows, images, labels, record):
  nfe = generate.evaluations(config)
  info = {'step': step, 'sampler': config.sampling.sampler, 'num_steps': generate.num_steps(config),
          'nfe_per_image': nfe.total, 'nfe_main': nfe.main, 'nfe_guiding': nfe.ref,
          'method': config.guidance.method, 'grid': config.sampling.grid,
          'num_samples': config.sampling.num_samples, 'p_uncond': config.diffusion.p_uncond,
          'seed': config.sampling.seed, 'labels': config.sampling.labels}
  if generate.guide_state_per_step(config):
    info['guide_state'] = 'step'
  tables.write_tables(directory, rows, info, provenance=record)
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
