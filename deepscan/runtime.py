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

    n = total_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class CallersThreads:
    """The torch thread count the caller had when a scan began, handed back whenever control returns to it.

    A scan sets torch's threads for its own stages (overlapped on 2 cores, the calling thread gets one):
    without this an evidence pipeline's own torch models ran on half the cores after ``Scanner.scan_video``,
    and between the results a scan yields."""

    def __init__(self):
        import torch

        self.count = torch.get_num_threads()

    def restore(self) -> None:
        import torch

        if torch.get_num_threads() != self.count:
            torch.set_num_threads(self.count)


THREADS_PER_CORE = 4  # the most torch threads a scan takes per core: more only thrash (4096 on 2 cores: 55x slower)


def max_threads() -> int:
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def check_threads(value, name: str = "threads") -> None:
    """Refuse a thread count that is not a whole number from 0 (every core) to :func:`max_threads`: 20,000
    made OpenMP fail to start threads (exit 1, read as "a fake found"); 100,000 exhausted the address space
    while the weights loaded."""
    if value is None:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_threads()):
        raise ValueError(f"{name} must be a whole number from 1 to {max_threads()} ({THREADS_PER_CORE} per core "
                         f"here; 0: every core), not {value!r}")


def total_threads(threads: int | None = None) -> int:
    """The CPU threads deepscan may use: the given number, else $DEEPSCAN_THREADS, else every core."""
    return threads or threads_from_environment() or os.cpu_count() or 1


def threads_from_environment() -> int | None:
    """$DEEPSCAN_THREADS as a positive whole number, None when unset, empty or 0 (every core, as it always
    meant); anything else is refused with its name (``int()``'s own message did not say which setting)."""
    text = os.environ.get("DEEPSCAN_THREADS", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= max_threads():
        raise ValueError(f"DEEPSCAN_THREADS must be a whole number of threads from 1 to {max_threads()} (0: every "
                         f"core), not {text!r}")
    return value or None


def can_overlap(threads: int | None = None) -> bool:
    """Whether face detection and classification may run side by side: with one thread in all, they would
    use two (``split_threads`` cannot give either stage less than one), so they run one after the other."""
    return total_threads(threads) > 1


def split_threads(threads: int | None = None) -> tuple[int, int]:
    """Threads for face detection and for classification when the two run side by side: half each. Only
    where ``can_overlap``: the two always add up to ``total_threads`` then.

    MTCNN's small convolutions and Python stages gain nothing from a second thread (measured on 2 cores: 16
    frames 0.96 s with 1 thread, 1.63 s with 2), so two stages on one thread each finish together in about the
    time of the slower one instead of one after the other."""
    n = total_threads(threads)
    return max(1, n // 2), max(1, n - n // 2)


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``). Frames and tensors of a new size each
    video leave the heap fragmented: without this, a scan's resident memory creeps up with every differently
    sized video (measured: 1.3 GB → 1.75 GB over 22 clips of assorted sizes; flat at 0.98 GB with it)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
