from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CLIPS = REPO / "sample_clips"
# One sample key for every test (and every deepscan they start): none is made in the user's data folder, and
# runs sample alike wherever they run. tests/test_samplekey.py tests the key file itself.
TEST_SAMPLE_KEY = "5eed" * 16
os.environ["DEEPSCAN_SAMPLE_KEY"] = TEST_SAMPLE_KEY


def shared_dir() -> Path:
    return Path(os.environ.get("DEEPSCAN_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not (d / "data" / "clips" / "MANIFEST.tsv").is_file():
        pytest.skip(f"../shared not available ({d})")
    return d


@pytest.fixture(scope="session")
def mesonet_weights(shared) -> Path:
    w = shared / "weights" / "mesonet" / "Meso4_DF.h5"
    if not w.is_file():
        pytest.skip("MesoNet weights not in ../shared")
    return w


def ffmpeg(*args: str) -> None:
    from deepscan.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL)


def make_test_video(path: Path, seconds: float = 2.0, size: str = "320x240", rate: int = 25,
                    extra_in: tuple = (), codec: tuple = ("-c:v", "libx264", "-pix_fmt", "yuv420p")) -> Path:
    """A synthetic clip from ffmpeg's test source (every frame differs, no faces)."""
    ffmpeg(*extra_in, "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds), *codec, str(path))
    return path


def write_frames_video(path: Path, frames: list[np.ndarray], rate: int = 25) -> Path:
    """Encode RGB frames (all one size) losslessly-ish so tests can check exact content."""
    h, w = frames[0].shape[:2]
    from deepscan.video import ffmpeg_exe

    proc = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
                             "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(rate), "-i", "pipe:", "-c:v",
                             "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path)], stdin=subprocess.PIPE)
    for f in frames:
        proc.stdin.write(np.ascontiguousarray(f, np.uint8).tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return path


def index_video(path: Path, n: int = 50, rate: int = 25, size: tuple[int, int] = (64, 48)) -> Path:
    """Each frame is a flat grey level that encodes its own index, so decoded content proves which frame it is
    (:func:`decoded_index`)."""
    frames = [np.full((size[1], size[0], 3), 4 * i + 20, np.uint8) for i in range(n)]
    return write_frames_video(path, frames, rate=rate)


def decoded_index(frame) -> int:
    return int(round((float(frame.image.mean()) - 20) / 4))


def all_frames(path, **kw) -> list:
    """Every sampled frame of ``deepscan.video.iter_frames(path, **kw)``, unbatched."""
    from deepscan.video import iter_frames

    return [f for batch in iter_frames(path, **kw) for f in batch]


@pytest.fixture
def test_video(tmp_path) -> Path:
    return make_test_video(tmp_path / "testsrc.mp4")
