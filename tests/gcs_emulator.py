"""A Google Cloud Storage emulator on localhost, in memory, for gs:// workdirs without a network.

`gcp-storage-emulator` serves GCS's JSON API; every client the project's gs:// path goes through is
pointed at it by the environment that `environment(port)` returns: epath (through gcsfs, as
`EPATH_USE_TF=false` selects), orbax's TensorStore, and tensorboardX (google-cloud-storage).
TensorFlow's own gs:// filesystem cannot be redirected, so epath is told not to use it.

The emulator ignores GCS's generation preconditions and sends no `x-goog-generation` header with a
download; TensorStore's OCDBT (orbax's format) relies on both, as it does on real GCS. `_add_generations`
adds them: ifGenerationMatch / ifGenerationNotMatch on downloads and uploads (412 / 304, as GCS answers).
"""

import contextlib
import functools
import http
import logging
import socket

BUCKET = 'bucket'


def environment(port):
  endpoint = f'http://127.0.0.1:{port}'
  return {
      'STORAGE_EMULATOR_HOST': endpoint,           # gcsfs, google-cloud-storage
      'TENSORSTORE_GCS_HTTP_URL': endpoint,        # orbax's array data
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator', # TensorStore: no credential lookup
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # no gRPC bucket-type probe (it waits 60 s)
      'EPATH_USE_TF': 'false',                     # epath: gcsfs instead of tf.io.gfile
  }


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _precondition_failed(request, generation):
  """The status GCS answers when the request's generation preconditions do not hold, else None."""
  match, not_match = (request.query.get(name, [None])[0] for name in ('ifGenerationMatch', 'ifGenerationNotMatch'))
  current = generation or '0'  # GCS: generation 0 means "no such object"
  if match is not None and match != current:
    return http.HTTPStatus.PRECONDITION_FAILED
  if not_match is not None and not_match == current:
    return http.HTTPStatus.NOT_MODIFIED if request.method == 'GET' else http.HTTPStatus.PRECONDITION_FAILED
  return None


def _generation(storage, bucket, name):
  from gcp_storage_emulator.exceptions import NotFound
  try:
    return storage.get_file_obj(bucket, name)['generation']
  except NotFound:
    return None


def _checked(handler, *, object_name):
  @functools.wraps(handler)
  def checked(request, response, storage, *args, **kwargs):
    bucket = request.params['bucket_name']
    name = object_name(request)
    generation = _generation(storage, bucket, name) if name else None
    status = _precondition_failed(request, generation) if name else None
    if status is not None:
      response.status = status
      return None
    result = handler(request, response, storage, *args, **kwargs)
    written = _generation(storage, bucket, name) if name else None
    if written is not None:
      response['x-goog-generation'] = written
    return result
  return checked


def _add_generations():
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects
  if getattr(objects, '_cfg_generations', False):
    return
  download = _checked(objects.download, object_name=lambda request: request.params['object_id'])
  insert = _checked(objects.insert, object_name=lambda request: request.query.get('name', [None])[0])
  objects.download = download  # `objects.get` calls it for ?alt=media
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is download.__wrapped__:
        handlers[method] = download
      elif handler is insert.__wrapped__:
        handlers[method] = insert
  objects._cfg_generations = True


@contextlib.contextmanager
def running():
  """Yields the port of an emulator holding one empty bucket, `BUCKET`; stops it afterwards."""
  from gcp_storage_emulator.server import create_server
  _add_generations()
  logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)  # it logs every 404 as an error
  port = _free_port()
  server = create_server('127.0.0.1', port, in_memory=True, default_bucket=BUCKET)
  server.start()
  server._api._httpd.handle_error = lambda request, address: None  # clients closing early: not news
  try:
    yield port
  finally:
    server.stop()
