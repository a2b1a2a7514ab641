"""Fixtures for the platform tests: an S3 API served by moto on loopback, and process helpers."""

from __future__ import annotations

import logging
import os

import pytest

BUCKET = "ccc-platform"


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on 127.0.0.1 (moto), with a bucket; yields its endpoint URL.

    pyarrow, boto3 and Ray workers started after this fixture find it through AWS_ENDPOINT_URL, the
    same variable a user sets for MinIO or another S3-compatible store.
    """
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[test]')")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_keys(s3_server):
    """A function listing the object keys under a prefix of the test bucket.

    Empty `prefix/` keys are left out: pyarrow writes them as folder markers (create_dir), they hold no data.
    """
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", [])
                      if not item["Key"].endswith("/"))

    return keys
