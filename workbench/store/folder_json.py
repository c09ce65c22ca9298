"""JSON files of a model folder, read within the bounds of :mod:`workbench.store.limits`.

Every JSON file the store parses (``config.json``, ``tokenizer_config.json``, shard
indexes...) is read here: a regular file only, at most its kind's byte bound, nested
at most :data:`~workbench._bounded_read.MAX_JSON_DEPTH` levels (checked on the text
before ``json.loads``), so a hostile file is one broken entry, never a
``RecursionError`` or a multi-gigabyte read for the whole listing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._bounded_read import load_json
from ..errors import BrokenModelError, UntrustedFileError
from .limits import json_max_bytes


def read_json(path: Path) -> Any:
    """The parsed JSON of ``path``.

    Raises:
        FileNotFoundError: it is not there.
        BrokenModelError: not valid JSON, too large, nested too deeply, no regular file,
            or unreadable; the message names the file.
    """
    try:
        return load_json(path, json_max_bytes(path.name))
    except UntrustedFileError as exc:
        raise BrokenModelError(f"{path.name} {exc.reason}",
                               hint="fix or replace the file (re-download the model)", path=path) from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BrokenModelError(f"{path.name} cannot be read ({exc.strerror or exc})",
                               hint="check the file's permissions", path=path) from None


def read_json_object(path: Path) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object.

    Raises:
        FileNotFoundError, BrokenModelError: as :func:`read_json`, or it holds no object.
    """
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise BrokenModelError(f"{path.name} is not a JSON object", hint="fix or replace the file", path=path)
    return doc


def config_or_none(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict; ``None`` when it is missing or cannot be used.

    For callers that only look something up in a config the listing already checked
    (quantization settings, ``auto_map``): a bad file is the listing's to report.
    """
    try:
        return read_json_object(folder / "config.json")
    except (OSError, BrokenModelError):
        return None
