"""A fake dressed to pass a fixed sample schedule: how it reads on the fixed schedule and on the seeded one.

    python benchmarks/schedule_attack.py [--pairs Rob_Doe_0 Zahar_Lupin_0] [--frames 32] [--precision fp32]

For each DeepFaceLive pair in $DEEPSCAN_SHARED/data/clips/deepfacelive_split (an original panel and its face-swapped
panel, the same recording), it writes into a temporary folder the swapped panel with the frames that the fixed
schedule (the middle of each of N equal slices, deepscan's sampling before session 53) would take replaced by the
original panel's same frames, re-encoded with libx264 CRF 16, and scans it twice: with the fixed schedule and as
deepscan scans now (each sample's place in its slice drawn from the file's sha256). The two panels alone are
scanned for reference. Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import deepscan  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import deepscan.scanner as scanner_module
from deepscan import Scanner
from deepscan.video import ffmpeg_exe, iter_frames, probe


def all_frames(path: Path, info) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", f"0:{info.stream_index}",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "pipe:"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)


def dressed_fake(real: Path, fake: Path, out: Path, frames: int) -> tuple[int, int]:
    """Write ``out``; return (frames in it, frames taken from the real panel)."""
    real_info, fake_info = probe(real), probe(fake)
    if (real_info.width, real_info.height) != (fake_info.width, fake_info.height):
        raise SystemExit(f"{real.name} and {fake.name} differ in size")
    real_frames, fake_frames = all_frames(real, real_info), all_frames(fake, fake_info)
    n = min(len(real_frames), len(fake_frames))
    fixed = [f.index for batch in iter_frames(fake, fake_info, n_frames=frames) for f in batch if f.index < n]
    dressed = fake_frames[:n].copy()
    dressed[fixed] = real_frames[fixed]
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                    "-s", f"{fake_info.width}x{fake_info.height}", "-r", str(fake_info.fps), "-i", "pipe:",
                    "-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p", str(out)],
                   input=dressed.tobytes(), check=True)
    taken = [f.index for batch in iter_frames(out, probe(out), n_frames=frames) for f in batch]
    if taken != fixed:
        raise SystemExit(f"{out.name}: the fixed schedule no longer takes the dressed frames")
    return n, len(fixed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["Rob_Doe_0", "Zahar_Lupin_0"])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args(argv)
    clips = Path(os.environ.get("DEEPSCAN_SHARED", "../shared")) / "data" / "clips" / "deepfacelive_split"
    if not clips.is_dir():
        print(f"no {clips}: set DEEPSCAN_SHARED", file=sys.stderr)
        return 2
    seeded_iter_frames = scanner_module.iter_frames

    def fixed_iter_frames(*a, **k):
        return seeded_iter_frames(*a, **{**k, "sample_seed": None})

    def score(path: Path, schedule) -> str:
        scanner_module.iter_frames = schedule
        try:
            r = Scanner(frames=args.frames, precision=args.precision, keep_heatmaps=False).scan_video(path)
        finally:
            scanner_module.iter_frames = seeded_iter_frames
        return f"{r.verdict} {r.score:.3f}" if r.score is not None else r.verdict

    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            real, fake = clips / f"{pair}__left_original.mp4", clips / f"{pair}__right_swapped.mp4"
            out = Path(tmp) / f"{pair.replace(' ', '_')}_dressed.mp4"
            n, replaced = dressed_fake(real, fake, out, args.frames)
            print(f"{pair}: {n} frames, {replaced} ({replaced / n:.1%}) from the original panel")
            print(f"  dressed fake, fixed schedule:  {score(out, fixed_iter_frames)}")
            print(f"  dressed fake, seeded (now):    {score(out, seeded_iter_frames)}")
            print(f"  original panel alone:          {score(real, seeded_iter_frames)}")
            print(f"  swapped panel alone:           {score(fake, seeded_iter_frames)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
