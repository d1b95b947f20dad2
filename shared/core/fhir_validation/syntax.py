"""Character and URI scheme checks shared by the walker, the reference check and the narrative check."""

from __future__ import annotations

import re

__all__ = ["BAD_CHARS", "DANGEROUS_SCHEMES", "SAFE_KEY", "SCHEME"]

BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates
SAFE_KEY = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")  # an element name fit to show in a path
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
DANGEROUS_SCHEMES = frozenset({"javascript", "vbscript", "data", "file", "livescript", "mocha", "jar"})
