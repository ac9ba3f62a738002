"""A tiny preset for tests and quick checks: Fashion-MNIST, a ~30k-parameter U-Net, a few steps.

python launch.py --config=configs/smoke.py --workdir=/tmp/smoke   # = configs/fashion_mnist.py:smoke
"""

from configs import fashion_mnist


def get_config(arg=None):
  return fashion_mnist.get_config('smoke' + (f',{arg}' if arg else ''))
