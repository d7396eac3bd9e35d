"""glibc's malloc, set up for a forward pass's temporaries.

A prompt's forward pass allocates and frees arrays of megabytes: an expert's gate and up
outputs, attention scores, quantized activations. By default glibc returns blocks that
large to the kernel when they are freed, and the next pass faults the pages back in,
zeroed: 6,000-10,000 faults per 256-token prompt on a Mixtral-shaped pair of layers, 3-4%
of its time on two threads. Kept in the heap, the same pages serve every pass (llama.cpp
allocates one compute buffer for the same reason). The price: freed blocks stay resident,
up to TRIM_THRESHOLD per heap; peak RSS of that 2-layer file rose 42 MiB (2%), the same
megabytes on a full Mixtral.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest; bigger blocks still get mappings of their own
TRIM_THRESHOLD = 128 << 20  # free memory kept at the top of a heap: a prompt batch's temporaries


def keep_freed_memory() -> bool:
    """Have malloc keep freed blocks of up to MMAP_THRESHOLD bytes for reuse.

    Process-wide, and idempotent. Returns whether the C library took the settings (glibc
    does; elsewhere this does nothing).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt in this C library
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
