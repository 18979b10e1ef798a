"""Fuzzing the video stage: mutated clips may only ever raise VideoError, never hang, never leave a process.

A short bounded run is part of the suite. For a longer run (docs/bad_inputs.md):

    DEEPSCAN_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from badinputs import child_processes, ffmpeg  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deepscan.video import VideoError, iter_frames, probe  # noqa: E402

EXAMPLES = int(os.environ.get("DEEPSCAN_FUZZ_EXAMPLES", "30"))
TIMEOUT_S = 10.0  # per probe and per decode: a hang becomes a VideoError past this, or fails the time check
ISO_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta", b"mvex", b"moof",
                  b"traf"}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Small valid clips to mutate: MP4 with its index first, and Matroska."""
    d = tmp_path_factory.mktemp("fuzzseed")
    src = "testsrc=size=64x48:rate=10"
    h264 = ("-t", "1", "-c:v", "libx264", "-g", "5", "-pix_fmt", "yuv420p")
    ffmpeg("-f", "lavfi", "-i", src, *h264, "-movflags", "+faststart", str(d / "seed.mp4"))
    ffmpeg("-f", "lavfi", "-i", src, *h264, str(d / "seed.mkv"))
    return {"mp4": (d / "seed.mp4").read_bytes(), "mkv": (d / "seed.mkv").read_bytes()}


def iso_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(offset, size) of every ISO-BMFF box, nested ones included."""
    end = len(data) if end is None else end
    found, pos = [], start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > end:
            break
        found.append((pos, size))
        if kind in ISO_CONTAINERS:
            found += iso_boxes(data, pos + 8, pos + size)
        pos += size
    return found


# A mutation is (kind, where in [0, 1), a number, some bytes); applied in order.
mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "delete", "box_size", "overwrite"]),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.binary(min_size=1, max_size=64),
)

INTERESTING_SIZES = (0, 1, 7, 8, 9, 0x7FFFFFFF, 0xFFFFFFFF)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, number, blob in mutations:
        if not out:
            break
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << (number % 8)
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at:at + 1 + number % 4096]
        elif kind == "overwrite":
            out[at:at + len(blob)] = blob
        elif kind == "box_size":
            boxes = iso_boxes(bytes(out))
            if boxes:
                off, size = boxes[int(where * len(boxes))]
                choices = (*INTERESTING_SIZES, size - 1, size + 1, number)
                out[off:off + 4] = struct.pack(">I", choices[number % len(choices)])
    return bytes(out)


def screen(path: Path) -> str:
    """What the scanner's video stage does with one file: 'frames', or the VideoError message."""
    t0 = time.monotonic()
    try:
        info = probe(path, timeout_s=TIMEOUT_S)
        n = sum(len(b) for b in iter_frames(path, info, n_frames=2, batch_size=2, timeout_s=TIMEOUT_S))
        outcome = f"frames:{n}"
    except VideoError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) <= 300
        outcome = "error:" + message
    assert time.monotonic() - t0 < 3 * TIMEOUT_S, "the video stage hung"
    assert child_processes() == [], "an ffmpeg process was left behind"
    return outcome


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_mutated_clips_only_raise_video_error(seeds, tmp_path_factory, container):
    work = tmp_path_factory.mktemp(f"fuzz_{container}")
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 100,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(mutation, min_size=1, max_size=6))
    def check(mutations):
        path = work / f"mutant.{container}"
        path.write_bytes(mutate(seeds[container], mutations))
        outcome = screen(path)
        key = outcome.split(":")[0] if outcome.startswith("frames") else outcome
        seen[key] = seen.get(key, 0) + 1

    check()
    assert sum(seen.values()) >= min(EXAMPLES, 10)
    summary = "; ".join(f"{v}× {k}" for k, v in sorted(seen.items()))
    print(f"{container}: {sum(seen.values())} inputs; {summary}")


def test_mutate_is_not_a_no_op(seeds):
    data = seeds["mp4"]
    assert len(iso_boxes(data)) > 10  # nested boxes were found, so box_size hits moov's insides too
    assert mutate(data, [("box_size", 0.5, 3, b"x")]) != data
    assert mutate(data, [("truncate", 0.5, 0, b"x")]) == data[:len(data) // 2]
