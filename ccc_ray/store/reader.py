"""Reading counterfeit stores back, validated: schema, image shape and class range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ccc_ray.errors import CccError
from ccc_ray.store.schema import CLASS_NAMES_KEY, COUNTERFEIT_SCHEMA


def store_files(path: str | Path) -> list[Path]:
    """The Parquet files of a store: the file itself, or the visible `*.parquet` files of a folder."""
    base = Path(path)
    if base.is_file():
        return [base]
    if base.is_dir():
        files = sorted(p for p in base.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise CccError(f"counterfeit store {str(base)!r} holds no .parquet files")
        return files
    raise CccError(f"counterfeit store {str(base)!r} does not exist")


def _check_schema(schema: pa.Schema, file: Path) -> None:
    for field in COUNTERFEIT_SCHEMA:
        if field.name not in schema.names:
            raise CccError(f"counterfeit store {str(file)!r} has no column {field.name!r}; is it a ccc-ray store?")
        if not schema.field(field.name).type.equals(field.type):
            raise CccError(f"counterfeit store {str(file)!r}: column {field.name!r} is "
                           f"{schema.field(field.name).type}, expected {field.type}")


def read_store(path: str | Path, image_shape: tuple[int, int, int] | None = None,
               num_classes: int | None = None) -> pa.Table:
    """All rows of a store, checked against the schema and, if given, the data's shape and class count."""
    tables = []
    for file in store_files(path):
        try:
            schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise CccError(f"counterfeit store {str(file)!r} is not a Parquet file ({error})") from None
        _check_schema(schema, file)
        tables.append(pq.read_table(file, columns=COUNTERFEIT_SCHEMA.names))
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise CccError(f"counterfeit store {str(path)!r} is empty")
    shapes = {(c, h, w) for c, h, w in zip(table["channels"].to_pylist(), table["height"].to_pylist(),
                                            table["width"].to_pylist())}
    if len(shapes) != 1:
        raise CccError(f"counterfeit store {str(path)!r} mixes image shapes {sorted(shapes)}")
    (shape,) = shapes
    if image_shape is not None and shape != tuple(image_shape):
        raise CccError(f"counterfeit store {str(path)!r} holds {'x'.join(map(str, shape))} images, "
                       f"expected {'x'.join(map(str, image_shape))}")
    if num_classes is not None:
        top = max(table["target"].to_pylist())
        if top >= num_classes or min(table["target"].to_pylist()) < 0:
            raise CccError(f"counterfeit store {str(path)!r} has target class {top}, "
                           f"but the classifier has {num_classes} classes")
    return table


def table_images(table: pa.Table) -> torch.Tensor:
    """The `image` column as float32 N x C x H x W in [0, 1], exactly the values that were scored."""
    c, h, w = table["channels"][0].as_py(), table["height"][0].as_py(), table["width"][0].as_py()
    column = table["image"].combine_chunks()
    raw = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset:column.offset + len(column) + 1]
    size = c * h * w
    if not np.all(np.diff(offsets) == size):
        raise CccError(f"counterfeit store: some images are not {c}x{h}x{w} bytes long")
    start = offsets[0]
    pixels = raw[start:start + size * len(column)].reshape(len(column), h, w, c)
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def store_class_names(path: str | Path) -> list[str] | None:
    metadata = pq.read_schema(store_files(path)[0]).metadata or {}
    return json.loads(metadata[CLASS_NAMES_KEY]) if CLASS_NAMES_KEY in metadata else None
