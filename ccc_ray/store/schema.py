"""The counterfeit record: one Parquet row per counterfeit, with its lineage.

`image` holds the stored image as raw uint8 bytes in height x width x channels order (the layout of
PIL and NumPy images), so `np.frombuffer(row.image, np.uint8).reshape(height, width, channels)` gives
it back exactly as it was scored. Run-level settings live in the file's key-value metadata.

Two lineage columns are optional: stores written before they existed lack them, and `read_store` gives
such files all-null columns of the same type, so every table it returns has COUNTERFEIT_SCHEMA.
- `source_id`: the id of the real or substrate image a counterfeit was made from (null: made from noise
  or a latent alone);
- `mask`: the method's saliency or edit mask as raw uint8 bytes, height x width (one byte per pixel,
  0-255), in the image's row order (null: the method makes no mask).
"""

from __future__ import annotations

import pyarrow as pa

REQUIRED_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("target", pa.int32(), nullable=False),
    pa.field("predicted", pa.int32(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int32(), nullable=False),
    pa.field("nearest_train_l2", pa.float32(), nullable=False),
    pa.field("classifier_sha256", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("sample_index", pa.int64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
OPTIONAL_FIELDS = [
    pa.field("source_id", pa.string(), nullable=True),
    pa.field("mask", pa.binary(), nullable=True),
]
COUNTERFEIT_SCHEMA = pa.schema(REQUIRED_FIELDS + OPTIONAL_FIELDS)
REQUIRED_COLUMNS = tuple(field.name for field in REQUIRED_FIELDS)
OPTIONAL_COLUMNS = tuple(field.name for field in OPTIONAL_FIELDS)

RUN_METADATA_KEY = b"ccc_ray.run"
CLASS_NAMES_KEY = b"ccc_ray.class_names"
