"""Builds the oneDNN convolutions for XLA:CPU (cfg/models/onednn_conv.py) and checks that they load.

  apt-get install -y g++ libdnnl-dev && python -m cfg.cli.build_onednn_conv
  pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 && \
      python -m cfg.cli.build_onednn_conv --onednn="$VIRTUAL_ENV"       # no root: pip's oneDNN 3.2
"""

import argparse
import sys

from cfg.models import onednn_conv


def run(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--onednn', default=None, metavar='PREFIX',
                      help="build against the oneDNN under PREFIX (its include/ and lib/) instead of the system's")
  args = parser.parse_args(argv)
  try:
    library = onednn_conv.build(onednn=args.onednn)
  except RuntimeError as error:
    sys.exit(f'error: {error}')
  reason = onednn_conv.unavailable_reason()
  if reason:
    sys.exit(f'error: built {library}, but {reason}')
  print(f'built {library} (oneDNN {onednn_conv.onednn_version()}); config.model.conv_impl=auto now runs '
        f'oneDNN\'s convolutions on one CPU device')


if __name__ == '__main__':
  run()
