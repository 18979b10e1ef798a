"""Process-wide runtime settings that must be chosen deliberately (threads), kept in one place."""

from __future__ import annotations

import os


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: the given number, else $DEEPSCAN_THREADS, else every core.

    torch's OpenMP workers spin while waiting; on a 2-core machine whose other core is busy that stalls a
    forward pass many times over. OMP_WAIT_POLICY=PASSIVE (set in ``deepscan/__init__`` before torch loads)
    makes them sleep instead.
    """
    import torch

    n = threads or int(os.environ.get("DEEPSCAN_THREADS", "0")) or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
