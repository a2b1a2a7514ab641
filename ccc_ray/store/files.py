"""Where outputs go: local folders and storage URIs, written so that a failure never leaves a half file.

Local paths and URIs that pyarrow.fs understands (`s3://bucket/prefix`, `gs://bucket/prefix`,
`hdfs://...`, `file:///...`) are both accepted wherever a counterfeit store goes. Credentials and
endpoints come from the usual places of each file system (for S3: the AWS_* environment variables,
`~/.aws/`, instance roles; `AWS_ENDPOINT_URL` or `?endpoint_override=HOST:PORT&scheme=http` in the URI
for S3-compatible servers such as MinIO).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ccc_ray.errors import CccError


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` locations; everything else is a local path."""
    return isinstance(location, str) and "://" in location


def join_location(location: str | Path, name: str) -> str | Path:
    """`location/name` for a folder or a URI (keeping a URI's `?query` at the end)."""
    if not is_uri(location):
        return Path(location) / name
    base, _, query = str(location).partition("?")
    return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")


def filesystem_for(location: str | Path, what: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow file system, path inside it) for a local path or a URI; bad URIs raise a CccError naming `what`."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.fspath(Path(location).absolute())
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise CccError(f"{what}: cannot open {location!r} ({_one_line(error)}); local paths and "
                       "s3://, gs://, hdfs://, file:// URIs are accepted") from None


def ensure_writable_dir(path: str | Path, what: str) -> str | Path:
    """Create `path` if needed and prove we can write there, or raise a CccError naming `what`.

    Returns the folder as a Path, or the URI unchanged. For a URI the proof is a tiny hidden object
    written and deleted again: it fails early on a missing bucket or missing credentials.
    """
    if is_uri(path):
        filesystem, base = filesystem_for(path, what)
        probe = f"{base.rstrip('/')}/.write-check-{uuid.uuid4().hex}"
        try:
            filesystem.create_dir(base, recursive=True)
            with filesystem.open_output_stream(probe):
                pass
            filesystem.delete_file(probe)
        except (pa.ArrowException, OSError) as error:
            raise CccError(f"{what}: cannot write to {path!r} ({_one_line(error)})") from None
        return path
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as error:
        raise CccError(f"{what}: cannot write to {str(directory)!r} ({error.strerror or error})") from None
    return directory


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from teammates
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."
