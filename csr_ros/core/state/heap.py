"""Give freed memory back to the operating system after a large transient allocation.

Restoring a long on-disk ledger decodes every record (a few times the file's size in Python
objects) and then drops them; CPython and glibc keep those pages mapped, so the resident size of
a restarted process stays higher than that of the first one for its whole life.
:func:`release_free_memory` collects garbage and asks glibc to trim its heaps (``malloc_trim``);
elsewhere (another libc, another OS) it only collects. No torch, no ROS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def release_free_memory() -> bool:
    """Collect garbage, then trim the C heap. Returns True when glibc released memory."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
