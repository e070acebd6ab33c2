"""The storage root (no Dagster): where asset values, the GX context and Data Docs, training and pretraining
checkpoints and the forecast archive live. A local path by default (``$BI_PIPELINE_HOME``); any fsspec URL otherwise
(``s3://bucket/prefix``, ``gs://…``, ``file:///mnt/shared``, ``memory://…`` in tests), through universal-pathlib.

Local paths keep the guarantees of :func:`bi_pipeline.state.atomic_write` (temporary name, fsync, rename). An object
store has no rename, but each object is written whole by one ``put``, so a reader never sees half of one. Code that
needs a real directory (a GX file context, ``from_pretrained``) works in a local copy that :func:`pull` and
:func:`push` keep in step with the root.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pandas as pd
from upath import UPath

from bi_pipeline.state import atomic_write

StoragePath = Path | UPath


def storage_path(location: str | Path) -> StoragePath:
    """``location`` as a path: a plain :class:`~pathlib.Path` for a local path (``file://`` URLs included), a
    :class:`UPath` for any other fsspec URL."""
    text = str(location)
    if "://" not in text:
        return Path(text).expanduser()
    path = UPath(text)
    return Path(path.path) if path.protocol in ("file", "local") else path


def is_local(path: StoragePath) -> bool:
    return not isinstance(path, UPath) or path.protocol in ("", "file", "local")


def write_file(path: StoragePath, write: Callable[[IO[bytes]], None]) -> StoragePath:
    """``write(handle)`` into ``path``: atomically on a local disk, as one object on a remote store."""
    if is_local(path):

        def to_tmp(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                write(handle)

        return atomic_write(Path(path), to_tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    write(buffer)
    with path.open("wb") as handle:
        handle.write(buffer.getvalue())
    return path


def write_parquet(frame: pd.DataFrame, handle: IO[bytes], chunk_rows: int = 2_000_000) -> None:
    """``frame.to_parquet(handle, index=False)``, converted to Arrow a slice of ``chunk_rows`` at a time: the whole
    frame at once would need a second copy of it (6 GB for the features of M5's 54M rows). The same file: the same
    schema, pandas metadata and ``attrs``."""
    if len(frame) <= chunk_rows:
        frame.to_parquet(handle, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = pa.Table.from_pandas(frame.iloc[:chunk_rows], preserve_index=False)
    if frame.attrs:  # as pandas' own to_parquet keeps them
        first = first.replace_schema_metadata({**first.schema.metadata, b"PANDAS_ATTRS": json.dumps(frame.attrs)})
    with pq.ParquetWriter(handle, first.schema) as writer:
        writer.write_table(first)
        del first
        for begin in range(chunk_rows, len(frame), chunk_rows):
            part = pa.Table.from_pandas(frame.iloc[begin : begin + chunk_rows], preserve_index=False)
            writer.write_table(part.replace_schema_metadata(writer.schema.metadata))


def read_parquet(path: StoragePath) -> pd.DataFrame:
    """The frame ``pd.read_parquet`` gives for the file (the same Arrow conversion, ``attrs`` included), converted
    column by column with Arrow's memory handed back, so the file's Arrow copy is never held whole beside the frame:
    for the features of M5's 54M rows the peak is 12.6 GB instead of 14.7 GB, and 3 s instead of 16 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(read_bytes(path)), use_pandas_metadata=True)
    metadata = table.schema.metadata or {}
    frame = table.to_pandas(self_destruct=True)
    del table
    pa.default_memory_pool().release_unused()
    if b"PANDAS_ATTRS" in metadata:
        frame.attrs = json.loads(metadata[b"PANDAS_ATTRS"])
    return frame


def read_bytes(path: StoragePath) -> bytes:
    """The file's bytes; :class:`FileNotFoundError` when it is not there, whatever the store."""
    if not path.exists():
        raise FileNotFoundError(str(path))
    return path.read_bytes()


def files(root: StoragePath, pattern: str = "**/*") -> Iterator[StoragePath]:
    """Files under ``root`` matching ``pattern`` (nothing when ``root`` does not exist)."""
    if not root.exists():
        return iter(())
    return (p for p in sorted(root.glob(pattern), key=str) if p.is_file())


def remove_tree(root: StoragePath) -> None:
    if is_local(root):
        shutil.rmtree(Path(root), ignore_errors=True)
    elif root.exists():
        root.fs.rm(root.path, recursive=True)


def pull(remote: StoragePath, local: Path, skip: Callable[[str], bool] = lambda name: False) -> int:
    """Copy into ``local`` each file of ``remote`` that ``local`` lacks or holds with another size; returns how many.
    Files already there are kept (the local copy is a cache of the root, never newer than what it pushed)."""
    copied = 0
    for source in files(remote):
        relative = source.relative_to(remote).as_posix()
        if skip(relative):
            continue
        target = local / relative
        if target.exists() and target.stat().st_size == source.stat().st_size:
            continue  # decided on the listing's sizes: nothing is downloaded for files already here
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        copied += 1
    return copied


def push(local: Path, remote: StoragePath, since: float = 0.0, skip: Callable[[str], bool] = lambda n: False) -> int:
    """Copy to ``remote`` each file of ``local`` modified at or after ``since`` (a timestamp); returns how many."""
    copied = 0
    for source in sorted(local.rglob("*")):
        relative = source.relative_to(local).as_posix()
        if not source.is_file() or skip(relative) or source.stat().st_mtime < since:
            continue
        data = source.read_bytes()
        write_file(remote / relative, lambda handle, data=data: handle.write(data))
        copied += 1
    return copied
