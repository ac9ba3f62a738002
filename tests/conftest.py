"""Shared test set-up: a persistent XLA compilation cache so repeated programs compile once per run."""

import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'cfg-test-xla-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
