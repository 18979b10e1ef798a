"""Throughput benchmark: each stage alone, end to end, and a naive reference loop, in one run.

    python benchmarks/throughput.py [--repeats 3] [--frames 32] [--long-minutes 1 5 10] [--skip-long]

Prints frames/s per stage, the ratios end-to-end / slowest stage and end-to-end / naive loop (medians of
``--repeats`` runs), peak RSS while scanning long generated clips, and how time grows with clip length.
Clips are generated from the project's own sample clip (``sample_clips/astronaut_real.mp4``: 4 s, 480x480, one
face), never downloaded: looped to 10 s, scaled to 720 px high and padded with black to 1280x720 for the stage
and end-to-end timings; looped, scaled and padded to 640x360 for the long clips. Timings on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# deepscan first: it sets OMP_WAIT_POLICY=PASSIVE, which only counts before torch loads. Imported after torch
# (as this file did), the 2-thread arms busy-waited: detection 8.6 s against 0.84 s, the naive loop 5× slower.
import deepscan  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SOURCE_CLIP = REPO / "sample_clips" / "astronaut_real.mp4"


def ffmpeg(*args):
    from deepscan.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL)


GOP_S = 4  # keyframe interval of the generated clips: platform re-encodes use 1-5 s (x264's default is 10 s)


def make_clip(path: Path, seconds: float, size: str = "1280:720", fps: int = 25) -> Path:
    """Loop the sample clip to ``seconds``, padded to ``size``, H.264 — a talking-head-like test clip."""
    w, h = size.split(":")
    ffmpeg("-stream_loop", "-1", "-i", str(SOURCE_CLIP), "-t", str(seconds), "-vf",
           f"scale=-2:{h},pad={w}:{h}:(ow-iw)/2:0,fps={fps}", "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "23", "-g", str(GOP_S * fps), "-pix_fmt", "yuv420p", "-an", str(path))
    return path


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (ffmpeg)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def naive_mtcnn(settings):
    """MTCNN with the scanner's thresholds and smallest face, on the full frame, none of its levers. The
    scanner searches a ``detect_max_side`` copy for faces of ``0.8 × min_face_px`` (a margin for the resize)
    at full size; this searched for half that (20 px), a third more pyramid work for faces thrown away."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu", thresholds=list(settings.thresholds),
                 min_face_size=max(12, int(settings.min_face_px * 0.8)), post_process=False)


def naive_loop(path: Path, frames: int, detector, settings, mtcnn):
    """The FaceForensics++-style reference: read every frame with OpenCV, and on each sampled frame run
    MTCNN at full resolution and classify each face on its own (faces kept by the card's rules, as the scan)."""
    import cv2
    import numpy as np

    from deepscan.crops import crop_face

    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, frames).round().astype(int).tolist())
    scores, i = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i in wanted:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes, probs = mtcnn.detect(rgb)
            for box, prob in zip(boxes if boxes is not None else [], probs if probs is not None else [],
                                 strict=True):
                if prob >= settings.min_prob and min(box[2] - box[0], box[3] - box[1]) >= settings.min_face_px:
                    crop = crop_face(rgb, box, detector.card.crop_margin, detector.card.input_size)
                    scores.append(float(detector.predict(crop[None]).probs[0]))
        i += 1
    cap.release()
    return scores


def fresh_process(code: str) -> dict:
    """Run ``code`` in a fresh Python process (no thread settings or allocator state carried over) and return
    the JSON object it prints last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def long_clip_run(path: Path, frames: int, warm_up: Path, keyframes_only: bool = False, hwaccel: str = "none",
                  threads: int | None = None) -> dict:
    """Scan one clip in a fresh process, after a scan of ``warm_up`` (first calls pay for allocations and
    thread pools), and report its wall time and the process's peak RSS (ffmpeg's own memory not included)."""
    code = (
        "import json,sys,time;from deepscan import Scanner;"
        f"s=Scanner(frames={frames},keep_heatmaps=False,hwaccel={hwaccel!r},threads={threads!r},"
        f"keyframes_only={keyframes_only!r});"
        f"s.scan_video({str(warm_up)!r});t=time.perf_counter();"
        f"r=s.scan_video({str(path)!r});"
        "print(json.dumps({'wall_s':time.perf_counter()-t,'status':r.status,'faces':r.n_faces,"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child started by this (big)
        # process would report this process's peak instead of its own.
        "'peak_rss_mb':int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])/1024}))"
    )
    return fresh_process(code)


def variant_run(path: Path, frames: int, repeats: int, options: dict) -> dict:
    """Median end-to-end seconds of ``repeats`` scans of one clip in a fresh process with these ScanOptions."""
    code = (
        "import json,statistics,sys,time;from deepscan import Scanner;"
        f"s=Scanner(frames={frames},keep_heatmaps=True,**{options!r});s.scan_video({str(path)!r});ts=[]\n"
        f"for _ in range({repeats}):\n t=time.perf_counter();r=s.scan_video({str(path)!r});"
        "ts.append(time.perf_counter()-t)\n"
        "print(json.dumps({'median_s':statistics.median(ts),'score':r.score,'precision':s.detector.precision}))"
    )
    return fresh_process(code)


def folder_run(folder: Path, frames: int, options: dict) -> dict:
    """Seconds to scan every clip of ``folder`` in a fresh process with these ScanOptions (models loaded and
    warmed up on one clip first, outside the timing)."""
    code = (
        "import json,sys,time;from pathlib import Path;from deepscan import Scanner;"
        f"s=Scanner(frames={frames},keep_heatmaps=False,**{options!r});"
        f"s.scan_video(sorted(Path({str(folder)!r}).iterdir())[0]);t=time.perf_counter();"
        f"rs=list(s.scan({str(folder)!r}));"
        "print(json.dumps({'wall_s':time.perf_counter()-t,'videos':len(rs),"
        "'scores':[round(r.score or 0,6) for r in rs]}))"
    )
    return fresh_process(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--long-minutes", type=float, nargs="*", default=[1, 5, 10])
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--levers", action="store_true", help="also time end-to-end with each lever switched off")
    parser.add_argument("--folder-clips", type=int, default=0,
                        help="also scan a folder of this many short clips with and without preparing the next "
                             "video ahead (ScanOptions.prepare_ahead)")
    parser.add_argument("--hwaccel", default="none", help="video decoding for the decode stage and the scans, as "
                                                         "`deepscan scan --hwaccel` (none: on the CPU)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from deepscan import Scanner
    from deepscan.crops import crop_face
    from deepscan.runtime import configure_threads
    from deepscan.video import ffmpeg_version, iter_frames, probe

    threads = configure_threads(args.threads)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({threads} threads), "
          f"ffmpeg: {ffmpeg_version()}")

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "720p_10s.mp4", 10)
        scanner = Scanner(frames=args.frames, keep_heatmaps=True, hwaccel=args.hwaccel, threads=args.threads)
        det = scanner.detector
        scanner.face_finder  # noqa: B018 - load MTCNN before timing anything
        print(f"detector: {det.name} ({det.card.architecture}, {det.card.input_size}px, {det.precision}, "
              f"{det.device}); decoding: {scanner.hwaccel or 'cpu'}; "
              f"clip: 10 s 1280x720 H.264 (keyframe every {GOP_S} s), {args.frames} sampled frames, "
              f"median of {args.repeats}")
        info = probe(clip)
        scanner.scan_video(clip)  # warm-up: first calls pay for allocations and thread pools

        def decode():
            return [f for b in iter_frames(clip, info, n_frames=args.frames, hwaccel=scanner.hwaccel) for f in b]

        frames = decode()
        images = [f.image for f in frames]

        def detect():  # the scanner's own strategy: a full search every Nth frame, a short pyramid between
            state: dict = {}
            b = scanner.batch_frames
            return [x for i in range(0, len(frames), b) for x in scanner._find_faces(frames[i:i + b], i, state)]

        faces = detect()
        crops = np.stack([crop_face(img, f.box, det.card.crop_margin, det.card.input_size)
                          for img, fs in zip(images, faces, strict=True) for f in fs])
        naive_face_finder = naive_mtcnn(det.card.face_detector)
        # Stages alone and the naive loop get every thread (configure_threads before each: the scan leaves
        # torch on its own share); the scan splits them itself. Rounds interleave the five measurements, so a
        # burst of load on this shared machine hits them alike.
        runs: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "e2e": [], "naive": []}
        cpu: dict[str, list[float]] = {k: [] for k in runs}  # CPU seconds: this process's threads + ffmpeg's
        result = None
        for _ in range(args.repeats):
            for name, fn in (("decode", decode), ("detect", detect), ("classify", lambda: det.predict(crops)),
                             ("e2e", lambda: scanner.scan_video(clip)),
                             ("naive", lambda: naive_loop(clip, args.frames, det, det.card.face_detector,
                                                          naive_face_finder))):
                configure_threads(args.threads)
                c, t = cpu_seconds(), time.perf_counter()
                out = fn()
                runs[name].append(time.perf_counter() - t)
                cpu[name].append(cpu_seconds() - c)
                if name == "e2e":
                    result = out
        t_decode, t_detect, t_classify, t_e2e, t_naive = (statistics.median(runs[k]) for k in runs)
        c_decode, c_detect, c_classify, c_e2e, c_naive = (statistics.median(cpu[k]) for k in cpu)

        n = len(frames)
        stages = {"decode": t_decode, "detect faces": t_detect, "classify+heatmap": t_classify}
        stage_cpu = {"decode": c_decode, "detect faces": c_detect, "classify+heatmap": c_classify}
        print(f"\n{'stage':<22}{'seconds':>9}{'frames/s':>10}{'CPU s':>8}")
        for name, t in stages.items():
            print(f"{name:<22}{t:>9.3f}{n / t:>10.1f}{stage_cpu[name]:>8.3f}")
        print(f"{'end-to-end':<22}{t_e2e:>9.3f}{n / t_e2e:>10.1f}{c_e2e:>8.3f}   ({result.n_faces} faces, "
              f"{result.status})")
        print(f"{'naive loop':<22}{t_naive:>9.3f}{n / t_naive:>10.1f}{c_naive:>8.3f}")
        slowest = max(stages, key=stages.get)
        print(f"\nend-to-end / slowest stage ({slowest}): {t_e2e / stages[slowest]:.2f}x")
        # However well the stages overlap, the scan's CPU work has to fit on the cores there are (a stage alone
        # on all threads burns more CPU than in the scan, where MTCNN runs on one: use the scan's own).
        cores = min(threads, os.cpu_count() or 1)
        bound = max(max(stages.values()), c_e2e / cores)
        print(f"lower bound on end-to-end from the scan's CPU work ({c_e2e:.3f} CPU s on {cores} cores): "
              f"{bound:.3f} s = {bound / stages[slowest]:.2f}x the slowest stage; end-to-end is "
              f"{t_e2e / bound:.2f}x that bound")
        print(f"end-to-end / naive loop: {t_e2e / t_naive:.2f}x  (naive is {t_naive / t_e2e:.1f}x slower)")
        print(f"faces/s in classification: {len(crops) / t_classify:.1f}")

        if args.levers:
            # Each lever switched off on its own, each variant in a fresh process (thread settings and
            # allocator state of one never carry into the next): end-to-end seconds, median of repeats.
            print(f"\n{'end-to-end with':<44}{'seconds':>9}{'score':>8}")
            variants = {"all levers (defaults)": {}, "full face search on every frame": {"full_detect_every": 1},
                        "shorter pyramid instead of following faces": {"follow_faces": False},
                        "no classify/detect overlap": {"overlap": False}, "fp32 detector instead of bf16": {"precision": "fp32"}}
            for label, change in variants.items():
                r = variant_run(clip, args.frames, args.repeats,
                                {"hwaccel": args.hwaccel, "threads": args.threads, **change})
                print(f"{label:<44}{r['median_s']:>9.3f}{r['score']:>8.3f}   ({r['precision']})")

        if args.folder_clips:
            # A folder of short clips is where per-video start-up (hash, probe, provenance, the decoder's first
            # frames) shows: rounds alternate the two settings, each scan in a fresh process.
            folder = Path(tmp) / "folder"
            folder.mkdir()
            for k in range(args.folder_clips):
                ffmpeg("-ss", str(k % 7), "-i", str(SOURCE_CLIP), "-t", "3", "-vf", "scale=-2:360",
                       "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-an", str(folder / f"clip{k:03d}.mp4"))
            walls: dict[bool, list[float]] = {True: [], False: []}
            scores = {}
            for _ in range(args.repeats):
                for ahead in (True, False):
                    r = folder_run(folder, args.frames,
                                   {"hwaccel": args.hwaccel, "threads": args.threads, "prepare_ahead": ahead})
                    walls[ahead].append(r["wall_s"])
                    scores[ahead] = r["scores"]
            on, off = statistics.median(walls[True]), statistics.median(walls[False])
            print(f"\nfolder of {args.folder_clips} clips (3 s, 360p, {args.frames} frames each), median of "
                  f"{args.repeats}: next video prepared ahead {on:.2f} s ({on / args.folder_clips:.3f} s a clip), "
                  f"one after another {off:.2f} s ({off / args.folder_clips:.3f} s a clip): {off / on:.2f}x; "
                  f"same scores: {scores[True] == scores[False]}")

        if not args.skip_long:
            # Warmed up on a short clip of the long clips' own size: the peak RSS measured is the process's
            # (VmHWM), so a warm-up on the 720p clip would set it instead of the long clip.
            warm_up = make_clip(Path(tmp) / "warm_up_360p.mp4", 4, size="640:360")
            print(f"\nlong clips: 640x360 H.264, {args.frames} sampled frames, one scan each in a fresh process after a "
                  "warm-up scan of a 4-s clip of that size; peak RSS of that process (ffmpeg's not included)")
            print(f"{'clip':<12}{'wall s':>8}{'peak RSS MB':>13}{'faces':>7}   "
                  f"{'--keyframes-only: wall s':>28}{'peak RSS MB':>13}")
            for minutes in args.long_minutes:
                long = make_clip(Path(tmp) / f"long_{minutes}m.mp4", minutes * 60, size="640:360")
                stats = long_clip_run(long, args.frames, warm_up, hwaccel=args.hwaccel, threads=args.threads)
                keyframes = long_clip_run(long, args.frames, warm_up, keyframes_only=True, hwaccel=args.hwaccel,
                                          threads=args.threads)
                print(f"{minutes:>5g} min   {stats['wall_s']:>8.2f}{stats['peak_rss_mb']:>13.0f}{stats['faces']:>7}   "
                      f"{keyframes['wall_s']:>28.2f}{keyframes['peak_rss_mb']:>13.0f}")
                long.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
