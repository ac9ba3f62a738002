"""The tiny preset as the training tests use it: no preview grids, a loss logged at every step."""

from configs import smoke


def smoke_config(**train_overrides):
  config = smoke.get_config()
  config.train.update(dict(preview_every=0, log_every=1, **train_overrides))
  return config
