"""Every file the project reads or writes goes through one path layer, `etils.epath` (which orbax uses too).

A workdir may be a local folder, `gs://bucket/run`, or any other scheme epath supports (`s3://`, …);
nothing here calls `os.path` on a URL. Local relative paths become absolute (orbax needs that);
URLs are kept as given.

Writes of whole files are atomic where the store allows it: a local file is written under a temporary
name and renamed, so a reader never sees half a file; an object store replaces an object in one request.
"""

import contextlib
import io
import json
import os
import time

from typing import Iterator, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(location: PathLike) -> bool:
  return '://' in os.fspath(location)


def path(location: PathLike) -> epath.Path:
  """epath.Path of a local path (made absolute) or of a URL such as gs://bucket/run (kept as given)."""
  if isinstance(location, epath.Path) and (is_url(location) or location.is_absolute()):
    return location
  return epath.Path(location if is_url(location) else os.path.abspath(os.fspath(location)))


def join(location: PathLike, *parts: str) -> epath.Path:
  return path(location).joinpath(*parts)


def write_bytes(location: PathLike, data: bytes) -> None:
  target = path(location)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_url(target):
    target.write_bytes(data)  # one object, replaced in one request
    return
  partial = target.with_name(f'{target.name}.partial')
  partial.write_bytes(data)
  partial.replace(target)


def write_text(location: PathLike, text: str) -> None:
  write_bytes(location, text.encode())


def write_json(location: PathLike, value: object) -> None:
  write_text(location, json.dumps(value, indent=1) + '\n')


def read_json(location: PathLike) -> object:
  return json.loads(path(location).read_text())


def save_npz(location: PathLike, arrays: dict[str, np.ndarray]) -> None:
  """np.savez of `arrays` (a dict) to `location`, atomically, with exactly that name."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub lets ** reach allow_pickle
  write_bytes(location, buffer.getvalue())


@contextlib.contextmanager
def open_npz(location: PathLike) -> Iterator[np.lib.npyio.NpzFile]:
  """np.load of an .npz as a context manager: members are read when asked for (large arrays stay on disk)."""
  with path(location).open('rb') as stream, np.load(stream) as npz:
    yield npz


def load_npz(location: PathLike) -> dict[str, np.ndarray]:
  """{name: array} of an .npz, read in one piece (works for every scheme)."""
  with np.load(io.BytesIO(path(location).read_bytes())) as npz:
    return {name: npz[name] for name in npz.files}


def save_png(location: PathLike, grid: np.ndarray) -> None:
  """Writes a uint8 HWC grid as PNG (single-channel grids become grayscale)."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format='PNG')
  write_bytes(location, buffer.getvalue())


def files_under(folder: PathLike) -> Iterator[epath.Path]:
  """Every file below `folder`, recursively. (epath's glob has no `**` for object stores, and its walk
  drops the scheme of gs:// paths, so this lists folder by folder.)"""
  for item in sorted(path(folder).iterdir()):
    if item.is_dir():
      yield from files_under(item)
    else:
      yield item


def copy_tree(source: PathLike, destination: PathLike) -> None:
  """Copies every file below `source` to the same place below `destination`."""
  source, destination = path(source), path(destination)
  for item in files_under(source):
    target = destination / item.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    item.copy(target, overwrite=True)


def move_aside(source: PathLike, destination_dir: PathLike) -> epath.Path:
  """Moves the folder `source` into `destination_dir` under its own name (with a time suffix when that
  exists); returns the new path. Nothing is deleted before its copy is complete."""
  folder, aside = path(source), path(destination_dir)
  aside.mkdir(parents=True, exist_ok=True)
  target = aside / folder.name
  if target.exists():
    target = aside / f'{folder.name}.{time.strftime("%Y%m%d-%H%M%S")}'
  if not is_url(folder):
    folder.rename(target)
    return target
  copy_tree(folder, target)  # object stores have no folders to rename: copy, then delete the originals
  folder.rmtree()
  return target
