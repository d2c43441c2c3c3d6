"""The S3 model botocore makes casnap's client from: its files read with orjson, S3's alone
(s3.make_client), and what an error of the client's setup adds when a model file of
AWS_DATA_PATH's may be at fault."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import botocore.loaders
import orjson

# the operations casnap asks of an S3 store; a model without one of them makes no client for it
OPERATIONS = frozenset(
    [
        "CreateBucket",
        "DeleteObject",
        "GetObject",
        "HeadBucket",
        "HeadObject",
        "ListObjectsV2",
        "PutObject",
    ]
)


def hint(exc: BaseException | None, model: bool = False) -> str:
    """What to add to an error of the client's setup that a model file may be at fault for
    (model, or exc is a ModelFileError) when AWS_DATA_PATH names folders of models."""
    folders = os.environ.get("AWS_DATA_PATH")
    if not folders or not (model or isinstance(exc, ModelFileError)):
        return ""
    return f" (AWS_DATA_PATH={folders} names models read before botocore's own: check its S3 model)"


class ModelFileError(ValueError):
    """A model file botocore asked for that does not read as JSON."""


class ModelFiles:
    """botocore's bundled JSON data files read with orjson: json.loads with an OrderedDict
    for every object took ~45 ms of each S3 command's start for the endpoints file (1.2 MB)
    and the S3 model (1.5 MB) alone; dicts keep their order too, and botocore copies what
    it keeps into its own types. The file loader interface botocore's Loader takes."""

    OPENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
        (".json", open),
        (".json.gz", gzip.open),
    )

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + ext) for ext, _ in self.OPENERS)

    def load_file(self, file_path: str) -> Any:
        for ext, opener in self.OPENERS:
            if os.path.isfile(file_path + ext):
                try:
                    with opener(file_path + ext, "rb") as f:
                        return orjson.loads(f.read())
                except (OSError, ValueError, EOFError) as exc:
                    raise ModelFileError(f"{file_path + ext}: {exc}") from exc
        return None


class S3Loader(botocore.loaders.Loader):
    """botocore's loader of models, knowing S3 alone: botocore checks the service a client
    is made for against every model it bundles (listing ~400 folders: ~25 ms, a third of
    making the client); S3 is the only one casnap makes a client for. Its files are read
    by ModelFiles."""

    FILE_LOADER_CLASS = ModelFiles

    def list_available_services(self, type_name: str) -> list[str]:
        try:
            self.list_api_versions("s3", type_name)
        except botocore.exceptions.DataNotFoundError:
            return []
        return ["s3"]
