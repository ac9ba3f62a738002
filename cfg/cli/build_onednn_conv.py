"""Builds the oneDNN convolutions for XLA:CPU (cfg/models/onednn_conv.py) and checks that they load.

apt-get install -y g++ libdnnl-dev && python -m cfg.cli.build_onednn_conv
"""

import sys

from cfg.models import onednn_conv


def run():
  try:
    library = onednn_conv.build()
  except RuntimeError as error:
    sys.exit(f'error: {error}')
  reason = onednn_conv.unavailable_reason()
  if reason:
    sys.exit(f'error: built {library}, but {reason}')
  print(f'built {library}; config.model.conv_impl=auto now runs oneDNN\'s convolutions on one CPU device')


if __name__ == '__main__':
  run()
