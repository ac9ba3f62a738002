"""oneDNN convolutions on XLA:CPU: `conv_general_dilated`, a drop-in for `lax.conv_general_dilated`.

XLA:CPU runs convolutions through Eigen (or YNNPACK), which at the U-Net's small channel counts is 1.3-3×
slower than oneDNN, the library PyTorch's CPU convolutions use (experiments/throughput.md, section 8). This
module calls oneDNN's forward, input-gradient and kernel-gradient primitives through XLA's FFI, joined by a
custom_vjp, for the convolutions it covers: stride 1, no dilation, one feature group, float32, NHWC
activations and HWIO kernels (every convolution of the U-Net with resblock_updown). Anything else goes to
`lax.conv_general_dilated` unchanged. Same sums, summed in another order: results agree with XLA's to
float32 rounding (tests/test_onednn_conv.py), and the parameters are flax's own, so checkpoints load
either way.

The library is built once, from `onednn_conv.cc` beside this file, against oneDNN (2.x or 3.x) and jaxlib's
FFI headers, with the system's oneDNN:

  apt-get install -y g++ libdnnl-dev     # Debian 12: oneDNN 2.6.3; newer distributions ship 3.x
  python -m cfg.cli.build_onednn_conv    # writes cfg/models/_onednn_conv.so

or, without root, with pip's oneDNN in the venv (its include/ and lib/; the library finds it by rpath):

  pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0   # oneDNN 3.2
  python -m cfg.cli.build_onednn_conv --onednn="$VIRTUAL_ENV"

`config.model.conv_impl` chooses: 'xla', 'onednn' (an error says how to build the library if it is
missing), or 'auto': oneDNN on a single CPU device where the library is built, XLA otherwise. Several
devices keep XLA's convolutions: the custom calls have no sharding rule, so XLA would gather their
operands onto every device.
"""

import ctypes
import functools
import hashlib
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_onednn_conv.so')
BUILD_COMMAND = 'python -m cfg.cli.build_onednn_conv'
IMPLS = ('xla', 'onednn', 'auto')
_TARGETS = {'forward': 'CfgOnednnConvForward', 'input_gradient': 'CfgOnednnConvInputGradient',
            'kernel_gradient': 'CfgOnednnConvKernelGradient'}


def source_sha256():
  with open(SOURCE, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


PIP_ONEDNN = 'pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0'


def build(library=LIBRARY, onednn=None):
  """Compiles onednn_conv.cc into `library`, against the system's oneDNN or, with `onednn`, the one installed
  under that prefix (its include/ and lib/, e.g. a venv with pip's oneDNN); raises RuntimeError with the
  compiler's message if it fails."""
  prefix_flags = []
  if onednn is not None:
    include, lib = (os.path.join(os.path.abspath(onednn), folder) for folder in ('include', 'lib'))
    header = os.path.join(include, 'oneapi', 'dnnl', 'dnnl.hpp')
    if not os.path.exists(header):
      raise RuntimeError(f'--onednn={onednn}: there is no {header}. Give the prefix oneDNN is installed under '
                         f'(`{PIP_ONEDNN}` installs it into the venv: --onednn="$VIRTUAL_ENV"), or leave '
                         f'--onednn out to use the system\'s (apt-get install -y libdnnl-dev).')
    prefix_flags = [f'-I{include}', f'-L{lib}', f'-Wl,-rpath,{lib}']
  command = ['g++', '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{jax.ffi.include_dir()}', *prefix_flags,
             f'-DCFG_SOURCE_SHA256="{source_sha256()}"', SOURCE, '-o', library + '.tmp', '-ldnnl', '-fopenmp']
  try:
    done = subprocess.run(command, capture_output=True, text=True)
  except FileNotFoundError as error:
    raise RuntimeError('building the oneDNN convolutions needs g++: apt-get install -y g++ libdnnl-dev') from error
  if done.returncode:
    raise RuntimeError(f'building the oneDNN convolutions failed (is oneDNN installed? apt-get install -y '
                       f'libdnnl-dev, or `{PIP_ONEDNN}` and --onednn="$VIRTUAL_ENV"):\n{" ".join(command)}\n'
                       f'{done.stderr[-4000:]}')
  os.replace(library + '.tmp', library)  # a loaded older library stays intact until the next process
  return library


@functools.cache
def _load():
  """(ctypes library, None) with the FFI targets registered, or (None, why not)."""
  if not os.path.exists(LIBRARY):
    return None, f'{LIBRARY} is not built; build it with `{BUILD_COMMAND}` (needs g++ and libdnnl-dev)'
  try:
    library = ctypes.cdll.LoadLibrary(LIBRARY)
  except OSError as error:
    return None, f'{LIBRARY} does not load ({error}); rebuild it with `{BUILD_COMMAND}`'
  library.CfgOnednnConvSourceSha256.restype = ctypes.c_char_p
  if library.CfgOnednnConvSourceSha256().decode() != source_sha256():
    return None, f'{LIBRARY} was built from another version of {SOURCE}; rebuild it with `{BUILD_COMMAND}`'
  library.CfgOnednnConvOnednnVersion.restype = ctypes.c_char_p
  library.CfgOnednnConvImplementation.restype = ctypes.c_char_p
  library.CfgOnednnConvImplementation.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 11
  for target in _TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  return library, None


def unavailable_reason():
  """None when the oneDNN convolutions can run here, else why not and how to fix it."""
  return _load()[1]


def resolve(conv_impl):
  """'xla' or 'onednn' for config.model.conv_impl ('auto': oneDNN on a single CPU device where it is built)."""
  if conv_impl not in IMPLS:
    raise ValueError(f'config.model.conv_impl={conv_impl!r}; use one of {IMPLS}.')
  if conv_impl == 'auto':
    single_cpu = jax.default_backend() == 'cpu' and jax.device_count() == 1
    return 'onednn' if single_cpu and unavailable_reason() is None else 'xla'
  if conv_impl == 'onednn':
    if jax.default_backend() != 'cpu':
      raise ValueError(f'config.model.conv_impl=onednn runs on the CPU only, not on {jax.default_backend()}; '
                       f'use auto or xla.')
    reason = unavailable_reason()
    if reason:
      raise ValueError(f'config.model.conv_impl=onednn: {reason}. Or use conv_impl=auto or xla.')
  return conv_impl


def _library():
  """The loaded library; RuntimeError saying how to build it where it cannot load."""
  library, reason = _load()
  if reason:
    raise RuntimeError(reason)
  return library


def onednn_version():
  """The version of oneDNN the built library runs on, e.g. '2.6.3'."""
  return _library().CfgOnednnConvOnednnVersion().decode()


def implementation(kind, x_shape, kernel_shape, padding):
  """oneDNN's name for the kernel it runs for one convolution (kind: forward | input_gradient |
  kernel_gradient), e.g. 'brgconv:avx512_core'."""
  (pt, pb), (pl, pr) = padding
  return _library().CfgOnednnConvImplementation(list(_TARGETS).index(kind), *x_shape, kernel_shape[3],
                                             *kernel_shape[:2], pt, pb, pl, pr).decode()


def _ffi_call(kind, shape, a, b, padding):
  (pt, pb), (pl, pr) = padding
  return jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method='sequential')(
      a, b, pt=np.int64(pt), pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr))


def _call(kind, shape, a, b, padding):
  """The oneDNN call; under vmap (the guidance-weight sweeps vmap the sampler) a batched image or output
  gradient with a shared kernel is folded into the call's batch: ONE call of L·B rows, not L calls of B.
  A batched kernel, or the kernel gradient (a per-lane sum over rows), is one call per lane."""
  if kind == 'kernel_gradient':
    return _ffi_call(kind, shape, a, b, padding)

  @jax.custom_batching.custom_vmap
  def call(a, b):
    return _ffi_call(kind, shape, a, b, padding)

  @call.def_vmap
  def fold_lanes(lanes, in_batched, a, b):
    a_batched, b_batched = in_batched
    if b_batched:
      a = a if a_batched else jnp.broadcast_to(a, (lanes, *a.shape))
      return jax.lax.map(lambda ab: _call(kind, shape, *ab, padding), (a, b)), True
    rows = _call(kind, (lanes * shape[0], *shape[1:]), a.reshape(lanes * a.shape[1], *a.shape[2:]), b, padding)
    return rows.reshape(lanes, *shape), True

  return call(a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_nhwc(x, kernel, padding):
  """y[b, h, w, o] = Σ_{i, j, c} x̃[b, h + i, w + j, c] K[i, j, c, o], x̃ = x zero-padded by
  padding = ((top, bottom), (left, right)); x [B, H, W, C], K [KH, KW, C, O], float32, by oneDNN."""
  batch, height, width, _ = x.shape
  kernel_height, kernel_width, _, features = kernel.shape
  out_shape = (batch, height + sum(padding[0]) - kernel_height + 1, width + sum(padding[1]) - kernel_width + 1,
               features)
  return _call('forward', out_shape, x, kernel, padding)


def _conv_nhwc_forward(x, kernel, padding):
  return conv_nhwc(x, kernel, padding), (x, kernel)


def _conv_nhwc_backward(padding, residuals, dy):
  x, kernel = residuals
  return (_call('input_gradient', x.shape, dy, kernel, padding),
          _call('kernel_gradient', kernel.shape, x, dy, padding))


conv_nhwc.defvjp(_conv_nhwc_forward, _conv_nhwc_backward)


def covers(lhs, rhs, window_strides, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count=1, batch_group_count=1, preferred_element_type=None):
  """Whether `conv_general_dilated` with these arguments runs on oneDNN (else on lax's convolution)."""
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  ones = (1, 1)
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
          and tuple(window_strides) == ones and tuple(lhs_dilation or ones) == ones
          and tuple(rhs_dilation or ones) == ones and feature_group_count == 1 and batch_group_count == 1
          and lhs.dtype == rhs.dtype == jnp.float32 and preferred_element_type in (None, jnp.float32))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, on oneDNN where `covers` says so. `precision` does not apply: float32
  convolutions on the CPU are float32 either way."""
  if not covers(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, preferred_element_type):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  padding = tuple((int(low), int(high)) for low, high in padding)
  if min(min(pair) for pair in padding) < 0:  # cropping: lax's
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  _library()  # loads it, or says how to build it
  return conv_nhwc(lhs, rhs, padding)

