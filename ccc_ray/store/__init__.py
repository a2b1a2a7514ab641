"""The Parquet counterfeit store: schema, streaming atomic writer, validated reader."""

from ccc_ray.store.reader import (
           read_store,
           store_class_names,
           store_files,
           row_mask,
           table_images,
           table_masks,
)
from ccc_ray.store.schema import COUNTERFEIT_SCHEMA
from ccc_ray.store.writer import CounterfeitWriter, counterfeit_batch, store_file

__all__ = ["COUNTERFEIT_SCHEMA", "CounterfeitWriter", "counterfeit_batch", "read_store", "store_class_names",
           "row_mask", "store_file", "store_files", "table_images", "table_masks"]
