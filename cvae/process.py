"""Settings for a process that runs a single command (the ``cvae`` console script, a cohort generator's workers),
made before the command's heavy work: they change its speed, never its results."""
from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "single_threaded_blas"]

#: glibc ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this many bytes come from the heap, which is never trimmed below this many free bytes at its top.
_KEEP_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Let this process's C allocator keep and reuse the memory it frees (glibc's ``mallopt``; elsewhere nothing is
    done). Returns whether it was set.

    The volumes here are tens of MB each. By default glibc gives blocks that large back to the kernel when they are
    freed (``mmap``'d blocks, the trimmed top of the heap), and the next arrays fault the pages in again, zeroed by
    the kernel: a sixth of a synthetic subject's time, a third of ``cvae register``'s page faults. Kept, they are
    reused; the peak memory stays the same, it is only returned when the process exits.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def single_threaded_blas() -> None:
    """NumPy's BLAS (OpenBLAS) on one thread, unless ``$OPENBLAS_NUM_THREADS`` says otherwise; to be called before
    NumPy is imported (it reads the variable then).

    For a process whose NumPy products are thin (affine matrices times point lists: memory-bound, nothing to share
    out) and whose cores belong to torch: BLAS threads would only spin against torch's and the NIfTI writers'.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
