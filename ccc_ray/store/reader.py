"""Reading counterfeit stores back, validated: schema, nulls, value ranges, image shape and size.

A store is a Parquet file or a folder of them, local or under a storage URI (`s3://`, `gs://`, ...).
Files come from other people and other jobs, so every check runs before a row is used, and each
failure names the file and what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from ccc_ray.errors import CccError
from ccc_ray.store.files import filesystem_for, is_uri, join_location
from ccc_ray.store.schema import CLASS_NAMES_KEY, COUNTERFEIT_SCHEMA, OPTIONAL_COLUMNS, REQUIRED_COLUMNS

# A store file whose columns would decompress to more than this is refused before it is read
# (a few million 32x32 RGB images; a zstd "bomb" of a few kilobytes could otherwise claim any size).
MAX_UNCOMPRESSED_BYTES = 16 * 2**30
MAX_IMAGE_SIDE = 4096
CHANNELS = (1, 3)


def store_files(path: str | Path) -> list[str | Path]:
    """The Parquet files of a store: the file itself, or the visible `*.parquet` files of a folder."""
    if not is_uri(path):
        base = Path(path)
        if base.is_file():
            return [base]
        if base.is_dir():
            files = sorted(p for p in base.glob("*.parquet") if not p.name.startswith("."))
            if not files:
                raise CccError(f"counterfeit store {str(base)!r} holds no .parquet files")
            return files
        raise CccError(f"counterfeit store {str(base)!r} does not exist")
    filesystem, inner = filesystem_for(path, "counterfeit store")
    try:
        info = filesystem.get_file_info(inner)
        if info.type == pafs.FileType.File:
            return [path]
        if info.type == pafs.FileType.Directory:
            names = sorted(entry.base_name for entry in filesystem.get_file_info(pafs.FileSelector(inner))
                           if entry.type == pafs.FileType.File and entry.base_name.endswith(".parquet")
                           and not entry.base_name.startswith("."))
            if not names:
                raise CccError(f"counterfeit store {path!r} holds no .parquet files")
            return [join_location(path, name) for name in names]
    except (OSError, pa.ArrowException) as error:
        raise CccError(f"counterfeit store {path!r} cannot be listed ({' '.join(str(error).split())[:300]})") from None
    raise CccError(f"counterfeit store {path!r} does not exist")


def _check_schema(schema: pa.Schema, file: str | Path) -> None:
    """Every required column with its type; optional columns, where present, with theirs."""
    for field in COUNTERFEIT_SCHEMA:
        if field.name not in schema.names:
            if field.name in OPTIONAL_COLUMNS:
                continue  # a store written before the column existed
            raise CccError(f"counterfeit store {str(file)!r} has no column {field.name!r}; is it a ccc-ray store?")
        if not schema.field(field.name).type.equals(field.type):
            raise CccError(f"counterfeit store {str(file)!r}: column {field.name!r} is "
                           f"{schema.field(field.name).type}, expected {field.type}")


def _read_file(file: str | Path) -> pa.Table:
    """One store file, after its schema and declared size have been checked."""
    (table,) = read_file_parts(file, None)
    return table


def read_file_parts(file: str | Path, batch_rows: int | None, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """One store file in COUNTERFEIT_SCHEMA, after its schema and declared size have been checked: one
    table (`batch_rows` None), or tables of `batch_rows` rows streamed from it (memory: one row group).
    `columns`: only these required columns (e.g. no images, for an index of a large store)."""
    filesystem, inner = filesystem_for(file, "counterfeit store")
    try:
        with filesystem.open_input_file(inner) as handle:
            parquet = pq.ParquetFile(handle)
            _check_schema(parquet.schema_arrow, file)
            declared = sum(parquet.metadata.row_group(i).total_byte_size for i in range(parquet.num_row_groups))
            if declared > MAX_UNCOMPRESSED_BYTES:
                raise CccError(f"counterfeit store {str(file)!r} would decompress to {declared / 2**30:.1f} GiB, "
                               f"more than the {MAX_UNCOMPRESSED_BYTES / 2**30:.0f} GiB a store file may hold; "
                               "split it into several files")
            if columns is not None:
                yield parquet.read(columns=columns)
                return
            present = [name for name in COUNTERFEIT_SCHEMA.names if name in parquet.schema_arrow.names]
            if batch_rows is None:
                yield _with_optional_columns(parquet.read(columns=present))
                return
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
                yield _with_optional_columns(pa.Table.from_batches([batch]))
    except (pa.ArrowInvalid, OSError) as error:
        raise CccError(f"counterfeit store {str(file)!r} is not a Parquet file, or cannot be read "
                       f"({' '.join(str(error).split())[:300]})") from None


def _with_optional_columns(table: pa.Table) -> pa.Table:
    """Older stores lack the optional columns: all-null ones keep one schema across files."""
    columns = [table[field.name] if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
               for field in COUNTERFEIT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=COUNTERFEIT_SCHEMA)


def _check_values(table: pa.Table, where: str) -> None:
    """Nulls, ranges and image byte sizes: what the schema alone cannot promise."""
    if table.num_rows == 0:
        return  # read_store refuses a store with no rows at all
    for name in REQUIRED_COLUMNS:
        if table[name].null_count:
            raise CccError(f"counterfeit store {where}: column {name!r} has {table[name].null_count} empty values")
    for name in ("confidence", "nearest_train_l2"):
        if pc.any(pc.invert(pc.is_finite(table[name]))).as_py():
            raise CccError(f"counterfeit store {where}: column {name!r} holds NaN or infinite values")
    for name, low, high in (("confidence", 0.0, 1.0), ("nearest_train_l2", 0.0, None),
                            ("target", 0, None), ("predicted", 0, None), ("sample_index", 0, None)):
        smallest, largest = (value.as_py() for value in pc.min_max(table[name]).values())
        if smallest < low or (high is not None and largest > high):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise CccError(f"counterfeit store {where}: column {name!r} holds values from {_number(smallest)} to "
                           f"{_number(largest)}, expected {bound}")
    for name in ("height", "width"):
        smallest, largest = (v.as_py() for v in pc.min_max(table[name]).values())
        if smallest < 1 or largest > MAX_IMAGE_SIDE:
            raise CccError(f"counterfeit store {where}: column {name!r} holds {smallest} to {largest}, "
                           f"expected 1 to {MAX_IMAGE_SIDE} pixels")
    channels = set(pc.unique(table["channels"]).to_pylist())
    if not channels <= set(CHANNELS):
        raise CccError(f"counterfeit store {where}: column 'channels' holds {sorted(channels)}, expected 1 or 3")
    expected = pc.multiply(pc.multiply(table["height"].cast(pa.int64()), table["width"].cast(pa.int64())),
                           table["channels"].cast(pa.int64()))
    wrong = pc.sum(pc.not_equal(pc.binary_length(table["image"]).cast(pa.int64()), expected)).as_py() or 0
    if wrong:
        raise CccError(f"counterfeit store {where}: {wrong} images are not height x width x channels bytes long")
    if table["mask"].null_count < table.num_rows:
        mask_size = pc.multiply(table["height"].cast(pa.int64()), table["width"].cast(pa.int64()))
        wrong = pc.sum(pc.not_equal(pc.binary_length(table["mask"]).cast(pa.int64()), mask_size)).as_py() or 0
        if wrong:  # null masks compare as null, so only present masks count
            raise CccError(f"counterfeit store {where}: {wrong} masks are not height x width bytes long")


def _number(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_store(path: str | Path, image_shape: tuple[int, int, int] | None = None,
               num_classes: int | None = None) -> pa.Table:
    """All rows of a store, checked against the schema and, if given, the data's shape and class count."""
    tables = []
    for file in store_files(path):
        table = _read_file(file)
        _check_values(table, repr(str(file)))
        tables.append(table)
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise CccError(f"counterfeit store {str(path)!r} is empty")
    _check_shapes(path, _shapes(table), image_shape)
    if num_classes is not None:
        _check_classes(path, pc.max(table["target"]).as_py(), num_classes)
    return table


def _shapes(table: pa.Table) -> set[tuple[int, int, int]]:
    """The distinct (channels, height, width) of a table's rows."""
    distinct = table.select(["channels", "height", "width"]).group_by(["channels", "height", "width"]).aggregate([])
    return set(zip(*(distinct[name].to_pylist() for name in ("channels", "height", "width"))))


def _check_shapes(path: str | Path, shapes: set[tuple[int, int, int]],
                  image_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The one image shape of a store, or a CccError: mixed shapes, or not the data's."""
    if len(shapes) != 1:
        raise CccError(f"counterfeit store {str(path)!r} mixes image shapes {sorted(shapes)}")
    (shape,) = shapes
    if image_shape is not None and shape != tuple(image_shape):
        raise CccError(f"counterfeit store {str(path)!r} holds {'x'.join(map(str, shape))} images, "
                       f"expected {'x'.join(map(str, image_shape))}")
    return shape


def _check_classes(path: str | Path, top: int, num_classes: int) -> None:
    if top >= num_classes:
        raise CccError(f"counterfeit store {str(path)!r} has target class {top}, "
                       f"but the classifier has {num_classes} classes")


def scan_store(path: str | Path, image_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
               batch_rows: int = 4096) -> Iterator[tuple[str | Path, pa.Table]]:
    """(file, rows) of a store, `batch_rows` rows at a time, each part checked as `read_store` checks a table.

    For stores larger than memory: one row group (and one part) is held at a time. The checks are those of
    `read_store` (schema, values, one image shape across files, class count), except that an empty store
    yields nothing instead of raising.
    """
    store_shape = set()
    for file in store_files(path):
        for table in read_file_parts(file, batch_rows):
            _check_values(table, repr(str(file)))
            if not table.num_rows:
                continue
            store_shape = {_check_shapes(path, _shapes(table) | store_shape, image_shape)}
            if num_classes is not None:
                _check_classes(path, pc.max(table["target"]).as_py(), num_classes)
            yield file, table


def first_rows_per_class(path: str | Path, image_shape: tuple[int, int, int], num_classes: int,
                         per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` rows of each target class, in store order: images float32 N x C x H x W in [0, 1]
    and targets int64 N. A sample of bounded size (a report's grid), read part by part (`scan_store`), so a
    store larger than memory is never held; reading stops once every class has its rows."""
    counts = np.zeros(num_classes, np.int64)
    images, targets = [], []
    for _, table in scan_store(path, image_shape, num_classes):
        part_targets = table["target"].to_numpy()
        take = np.zeros(len(part_targets), bool)
        for row, target in enumerate(part_targets.tolist()):
            if counts[target] < per_class:
                take[row] = True
                counts[target] += 1
        if take.any():
            images.append(table_images(table.filter(pa.array(take))))
            targets.append(torch.from_numpy(part_targets[take].astype(np.int64)))
        if (counts >= per_class).all():
            break
    if not images:
        raise CccError(f"counterfeit store {str(path)!r} is empty")
    return torch.cat(images), torch.cat(targets)


def table_images(table: pa.Table) -> torch.Tensor:
    """The `image` column as float32 N x C x H x W in [0, 1], exactly the values that were scored."""
    return table_pixels(table).float().div_(255.0)


def table_pixels(table: pa.Table) -> torch.Tensor:
    """The `image` column as stored: uint8 N x C x H x W (`table_images` divides it by 255)."""
    c, h, w = table["channels"][0].as_py(), table["height"][0].as_py(), table["width"][0].as_py()
    column = table["image"].combine_chunks()
    raw = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset:column.offset + len(column) + 1]
    size = c * h * w
    if not np.all(np.diff(offsets) == size):
        raise CccError(f"counterfeit store: some images are not {c}x{h}x{w} bytes long")
    start = offsets[0]
    pixels = raw[start:start + size * len(column)].reshape(len(column), h, w, c)
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous()


def table_masks(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """The `mask` column as float32 N x 1 x H x W in [0, 1] (zeros where a row has none), and which rows have one.

    Decoded like `table_images`: mask bytes are H x W uint8, divided by 255.
    """
    h, w = table["height"][0].as_py(), table["width"][0].as_py()
    column = table["mask"].combine_chunks()
    present = column.is_valid().to_numpy(zero_copy_only=False)
    masks = np.zeros((len(column), h, w), np.uint8)
    if present.any():
        values = column.filter(pa.array(present))
        sizes = pc.binary_length(values).to_numpy()
        if not np.all(sizes == h * w):
            raise CccError(f"counterfeit store: some masks are not {h}x{w} bytes long")
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
        start = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset]
        masks[present] = data[start:start + h * w * len(values)].reshape(len(values), h, w)
    return torch.from_numpy(masks).unsqueeze(1).float().div_(255.0), torch.from_numpy(present)


def row_mask(table: pa.Table, index: int) -> np.ndarray | None:
    """Row `index`'s mask as H x W uint8, exactly as stored, or None where the row has no mask."""
    value = table["mask"][index].as_py()
    if value is None:
        return None
    return np.frombuffer(value, np.uint8).reshape(table["height"][index].as_py(), table["width"][index].as_py())


def store_class_names(path: str | Path) -> list[str] | None:
    file = store_files(path)[0]
    filesystem, inner = filesystem_for(file, "counterfeit store")
    metadata = pq.read_schema(inner, filesystem=filesystem).metadata or {}
    return json.loads(metadata[CLASS_NAMES_KEY]) if CLASS_NAMES_KEY in metadata else None
