"""Reads TensorBoard scalars back from an event folder (tensorboard's EventAccumulator; no TensorFlow)."""

from tensorboard.backend.event_processing import event_accumulator


def read_scalars(logdir):
  """{tag: [(step, value), …]} of every scalar under `logdir`."""
  accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={'scalars': 0, 'images': 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']}


def image_tags(logdir):
  accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={'images': 0})
  accumulator.Reload()
  return accumulator.Tags()['images']
