"""The one exception every data loader raises, so that a command line can print it as one line."""
from __future__ import annotations

import json
import os
import sys
from typing import Any


class DataError(ValueError):
    """Input data that cannot be used: the message names the file, the field or line, and what was expected."""


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """json.load with a missing file, bad encoding and bad syntax reported as DataError naming the file."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected a {what}")
    try:
        # utf-8-sig: a byte-order mark (as some editors write) is not a part of the JSON
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except RecursionError:  # [[[[... deeper than Python's stack: one line, not a traceback
        raise DataError(f"{path}: not a usable {what}: its JSON is nested too deeply to read (more than about "
                        f"{sys.getrecursionlimit():,} levels)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
