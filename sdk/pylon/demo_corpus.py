"""A training corpus that ships with Python itself: the docstrings of standard-library modules.

Nothing is downloaded; the same interpreter version gives the same bytes.
"""

from __future__ import annotations

import importlib
import inspect

MODULES = ("json", "collections", "itertools", "functools", "pathlib", "re", "string", "textwrap", "typing",
           "dataclasses", "datetime", "decimal", "fractions", "statistics", "heapq", "bisect", "csv", "enum",
           "argparse", "logging", "contextlib", "abc", "copy", "shutil", "tempfile", "zipfile", "tarfile",
           "hashlib", "base64", "random", "math", "operator", "queue", "threading", "subprocess", "socket",
           "asyncio", "unittest", "difflib", "pprint", "calendar", "uuid", "inspect", "ast", "tokenize")


def build_corpus(max_bytes: int = 400_000) -> str:
    """Concatenate module, class and function docstrings, in a fixed order, up to ``max_bytes``."""
    parts: list[str] = []
    size = 0
    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod) or ""]
        for name in sorted(getattr(mod, "__all__", None) or dir(mod)):
            obj = getattr(mod, name, None)
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            doc = doc.strip()
            if len(doc) < 40:
                continue
            parts.append(doc)
            size += len(doc.encode()) + 2
            if size >= max_bytes:
                return "\n\n".join(parts) + "\n"
    return "\n\n".join(parts) + "\n"
