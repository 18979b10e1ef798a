"""How well campaign grouping finds re-uploads, and how often it merges distinct videos.

    python benchmarks/campaign_robustness.py [--clips 22] [--backend pdq|vpdq] [--pcts 50 60 70 80]

From the labelled clips in $DEEPSCAN_SHARED/data/clips (chosen across sources, including DeepFaceLive
left/right panel pairs: the same motion with a different face, the main false-merge risk), it writes
transformed copies into a temporary folder (low-bitrate re-encode, 360p, 10% crop, mirror, caption band,
first 2 s cut, 15 fps; each also capped at 640 px and 10 s), hashes every one of the 149 shared clips and
every copy, groups them all together and reports, for each match percentage threshold:

- recall per transformation: copies grouped with their own original;
- false merges per transformation: copies grouped with any other original;
- false merges among the shared clips: pairs of distinct clips that end up in one group;
- which copies count as near-exact (their verdict is inherited) and which are screened themselves, and
  the same for the DeepFaceLive pairs and the sample clips' astronaut real/fake pair.

Hashes of the shared clips are cached under $TMPDIR/deepscan-campaign-hashes (never in the repository).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepscan.campaign import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    SECONDS_PER_HASH,
    VideoHash,
    candidate_pairs,
    group,
    is_match,
    is_verified_copy,
    match,
    pixel_check,
    pixel_difference,
    video_hash,
)
from deepscan.video import ffmpeg_exe  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "deepscan-campaign-hashes"
CAP = "scale='if(gt(iw,ih),min(640,iw),-2)':'if(gt(iw,ih),-2,min(640,ih))'"
TRANSFORMS = {  # name -> (extra ffmpeg input options, filter chain before the 640 px cap, output options)
    "reencode_150k": ([], "null", ["-b:v", "150k", "-maxrate", "150k", "-bufsize", "300k"]),
    "rescale_360p": ([], "scale=-2:360", []),
    "crop_10pct": ([], "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2", []),
    "hflip": ([], "hflip", []),
    # A meme-style caption band: 20% white pad on top with black "words" (the bundled ffmpeg has no drawtext).
    "caption_band": ([], "pad=iw:trunc(ih*1.2/2)*2:0:trunc(ih*0.2/2)*2:white,"
                         "drawbox=x=iw*0.08:y=ih*0.05:w=iw*0.25:h=ih*0.06:color=black:t=fill,"
                         "drawbox=x=iw*0.38:y=ih*0.05:w=iw*0.3:h=ih*0.06:color=black:t=fill,"
                         "drawbox=x=iw*0.72:y=ih*0.05:w=iw*0.18:h=ih*0.06:color=black:t=fill", []),
    "trim_2s": (["-ss", "2"], "null", []),
    # A cut off the hash grid (at 1, 2 or 4 hashes a second): the copy's hash frames fall between its source's.
    "trim_1.3s": (["-ss", "1.3"], "null", []),
    "fps_15": ([], "fps=15", []),
    # Platform re-framings of a landscape clip: the centred square and 9:16 vertical crops.
    "square_crop": ([], "crop='trunc(min(iw,ih)/2)*2':'trunc(min(iw,ih)/2)*2'", []),
    "vertical_crop": ([], "crop='trunc(min(iw,ih*9/16)/2)*2':ih", []),
}


def choose_clips(clips_dir: Path, n: int) -> list[Path]:
    """Round-robin over sources (manifest order), DeepFaceLive pairs taken as left+right together."""
    rows = [line.split("\t") for line in (clips_dir / "MANIFEST.tsv").read_text().splitlines()[1:] if line]
    by_source: dict[str, list[str]] = {}
    for r in rows:
        by_source.setdefault(r[0].split("/")[0], []).append(r[0])
    chosen: list[str] = []
    pairs = [f for f in by_source.pop("deepfacelive_split", []) if "__left_" in f]
    for left in pairs[: max(2, n // 6)]:
        chosen += [left, left.replace("__left_original", "__right_swapped")]
    while len(chosen) < n and any(by_source.values()):
        for files in by_source.values():
            if files and len(chosen) < n:
                chosen.append(files.pop(0))
    return [clips_dir / f for f in chosen]


def make_copy(src: Path, out: Path, name: str) -> Path:
    pre, chain, opts = TRANSFORMS[name]
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-threads", "1", *pre, "-i",
                    str(src), "-t", "10", "-vf", f"{chain},{CAP}", "-an", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", *opts, str(out)], check=True, stdin=subprocess.DEVNULL)
    return out


def cached_hash(path: Path, backend: str) -> tuple[VideoHash | None, float]:
    st = path.stat()
    key = hashlib.sha1(f"v12|{backend}|{SECONDS_PER_HASH}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    f = CACHE / f"{key}.json"
    if f.is_file():
        d = json.loads(f.read_text())
        return (VideoHash.from_dict(d["hash"]) if d["hash"] else None), d["seconds"]
    t = time.perf_counter()
    try:
        h = video_hash(path, backend=backend)
    except Exception as exc:  # noqa: BLE001 - reported, the clip stays ungrouped
        print(f"  could not hash {path.name}: {exc}", file=sys.stderr)
        h = None
    seconds = time.perf_counter() - t
    CACHE.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"hash": h.to_dict() if h else None, "seconds": seconds}))
    return h, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=22, help="originals to transform (default 22)")
    ap.add_argument("--backend", default="pdq", choices=["pdq", "vpdq"])
    ap.add_argument("--pcts", type=float, nargs="+", default=[50, 60, 70, 80])
    ap.add_argument("--work", type=Path, help="keep the transformed copies here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--run-frames", type=int, default=DEFAULT_THRESHOLDS.run_frames,
                    help="consecutive track frames a difference must hold over (Thresholds.run_frames; "
                         f"default {DEFAULT_THRESHOLDS.run_frames})")
    args = ap.parse_args()
    base = replace(DEFAULT_THRESHOLDS, run_frames=args.run_frames)
    shared = Path(os.environ.get("DEEPSCAN_SHARED", REPO.parent / "shared"))
    clips_dir = shared / "data" / "clips"
    if not (clips_dir / "MANIFEST.tsv").is_file():
        print(f"no clips in {clips_dir}", file=sys.stderr)
        return 2
    all_clips = sorted(clips_dir / line.split("\t")[0]
                       for line in (clips_dir / "MANIFEST.tsv").read_text().splitlines()[1:] if line)
    originals = choose_clips(clips_dir, args.clips)

    t0 = time.perf_counter()
    hashes: dict[str, VideoHash | None] = {}
    seconds_hashing = video_seconds = 0.0
    for p in all_clips:
        h, s = cached_hash(p, args.backend)
        hashes[str(p)] = h
        seconds_hashing += s
        video_seconds += h.duration_s if h else 0.0
    print(f"{len(all_clips)} shared clips hashed ({args.backend}): {seconds_hashing:.1f} s for "
          f"{video_seconds:.0f} s of video ({seconds_hashing / max(video_seconds, 1e-9) * 1000:.1f} ms per "
          f"video second; cached runs report the first run's time)")

    tmp = tempfile.TemporaryDirectory(prefix="deepscan-campaign-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    copies: dict[str, tuple[str, str]] = {}  # copy path -> (original path, transform)
    t = time.perf_counter()
    for src in originals:
        for name in TRANSFORMS:
            out = work / f"{src.parent.name}__{src.stem}__{name}.mp4"
            if not out.is_file():
                make_copy(src, out, name)
            copies[str(out)] = (str(src), name)
    print(f"{len(copies)} copies of {len(originals)} clips made in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    for c in copies:
        hashes[c] = cached_hash(Path(c), args.backend)[0]
    print(f"copies hashed in {time.perf_counter() - t:.0f} s (cached when --work is reused)")

    origin = {str(p): str(p) for p in all_clips} | {c: o for c, (o, _) in copies.items()}
    report: dict = {"backend": args.backend, "originals": [str(p.relative_to(clips_dir)) for p in originals],
                    "thresholds": {}}

    def short(p: str) -> str:
        return str(Path(p).relative_to(clips_dir)) if p.startswith(str(clips_dir)) else Path(p).name

    print()
    header = ["min %", *TRANSFORMS, "all", "copies merged with another clip", "distinct shared clips merged"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    details = {}
    for pct in args.pcts:
        th = replace(base, min_pct=pct)
        groups = group(hashes, th, order=[str(p) for p in all_clips] + list(copies))
        gid = {m: g.id for g in groups for m in g.members}
        members_of = {g.id: g.members for g in groups}
        recall = {n: [] for n in TRANSFORMS}
        false_copy = {n: 0 for n in TRANSFORMS}
        missed, merged_copies = [], []
        for c, (o, name) in copies.items():
            recall[name].append(gid[c] == gid[o])
            if gid[c] != gid[o]:
                missed.append(f"{name}: {short(o)}")
            others = sorted({short(origin[m]) for m in members_of[gid[c]] if origin[m] != o})
            false_copy[name] += bool(others)
            if others:
                merged_copies.append(f"{name}: {short(o)} with {', '.join(others)}")
        merged = [sorted({short(origin[m]) for m in g.members if m in origin and origin[m] == m})
                  for g in groups]
        merged = [m for m in merged if len(m) > 1]
        row = {n: sum(v) / len(v) for n, v in recall.items()}
        allr = sum(sum(v) for v in recall.values()) / len(copies)
        print(" | ".join([f"{pct:g}", *(f"{row[n]:.0%}" for n in TRANSFORMS), f"{allr:.1%}",
                          f"{sum(false_copy.values())}/{len(copies)}", str(len(merged))]))
        details[pct] = (merged, missed, merged_copies)
        report["thresholds"][str(pct)] = {"recall": row, "recall_all": allr, "false_copy_merges": false_copy,
                                          "merged_shared_clips": merged, "missed": missed}
    for pct, (merged, missed, merged_copies) in details.items():
        if pct == DEFAULT_THRESHOLDS.min_pct:
            print(f"\nat {pct:g}% (the default): shared clips grouped together: {merged or 'none'}")
            print(f"  copies not grouped with their original: {missed or 'none'}")
            print("  copies grouped with another clip too:" + "".join(f"\n    {m}" for m in merged_copies))

    # The closest distinct pairs among the shared clips, and what the pixel check says about them.
    keys = [str(p) for p in all_clips if hashes[str(p)] is not None]
    close = []
    for i, j in candidate_pairs([hashes[k] for k in keys]):
        a, b = hashes[keys[i]], hashes[keys[j]]
        (pa, pb), mirrored = match(a, b, base, return_mirrored=True)
        close.append((min(pa, pb), max(pa, pb), mirrored, pixel_check(a, b, base), keys[i], keys[j]))
    close.sort(key=lambda x: (-x[0], x[4]))
    vpdq_matching = [x for x in close if x[0] >= DEFAULT_THRESHOLDS.min_pct]
    print(f"\nshared-clip pairs matching by vPDQ alone at {DEFAULT_THRESHOLDS.min_pct:g}%: {len(vpdq_matching)}; "
          f"kept apart by the pixel check (a local difference: >= {DEFAULT_THRESHOLDS.pixel_diff}, "
          f"locality >= {DEFAULT_THRESHOLDS.min_locality}): "
          f"{sum(x[3] is not None and x[3].altered(base) for x in vpdq_matching)}; "
          f"pixel check not applicable: {sum(x[3] is None for x in vpdq_matching)}")
    print("matching pairs that the pixel check does not separate (min %, max %, mirrored, pixel difference, "
          "locality):")
    for lo, hi, mirrored, px, a, b in vpdq_matching:
        if px is None or not px.altered(base):
            print(f"  {lo:5.1f} {hi:5.1f} {'M' if mirrored else ' '} "
                  f"{'—' if px is None else f'{px.difference:.3f} {px.locality:5.1f}'} {short(a)} ~ {short(b)}")
    dfl = [x[3] for x in vpdq_matching if x[3] is not None and "__left_original" in x[4] + x[5]
           and "__right_swapped" in x[4] + x[5]]
    if dfl:
        pxs, locs = sorted(c.difference for c in dfl), sorted(c.locality for c in dfl)
        print(f"DeepFaceLive left/right pixel differences: min {pxs[0]:.3f}, median {pxs[len(pxs) // 2]:.3f}; "
              f"locality min {locs[0]:.1f}, median {locs[len(locs) // 2]:.1f} ({len(pxs)} pairs)")
    else:
        print("no DeepFaceLive pairs compared")
    report["closest_pairs"] = [[lo, hi, mirrored, None if px is None else [px.difference, px.locality], short(a),
                                short(b)] for lo, hi, mirrored, px, a, b in close[:60]]

    # Which copies may inherit the original's verdict (verified pixel copies), per transformation.
    verified = {n: [] for n in TRANSFORMS}
    diffs = {n: [] for n in TRANSFORMS}
    for c, (o, name) in copies.items():
        verified[name].append(is_verified_copy(hashes[c], hashes[o], base))
        px = pixel_difference(hashes[o], hashes[c], base)
        if px is not None and is_match(hashes[o], hashes[c], base):
            diffs[name].append(px)
    print("\nverified pixel copies (may inherit the verdict: difference < "
          f"{DEFAULT_THRESHOLDS.verify_diff}), per transformation; largest pixel difference:")
    for n in TRANSFORMS:
        print(f"  {n}: {sum(verified[n])}/{len(verified[n])}; max difference "
              f"{max(diffs[n]) if diffs[n] else float('nan'):.3f}")
    sample = REPO / "sample_clips"
    real, fake = (video_hash(sample / "astronaut_real.mp4", backend=args.backend),
                  video_hash(sample / "astronaut_mouthwarp_fake.mp4", backend=args.backend))
    print(f"astronaut real vs mouthwarp fake: match % {tuple(round(float(x), 1) for x in match(real, fake))}, "
          f"pixel difference {pixel_difference(real, fake, base):.3f}, verified copy: {is_verified_copy(fake, real, base)}")
    report.update(verified={n: [int(sum(v)), len(v)] for n, v in verified.items()},
                  max_copy_pixel_difference={n: max(v) if v else None for n, v in diffs.items()},
                  astronaut={"match": [float(x) for x in match(real, fake)],
                             "pixel_difference": pixel_difference(real, fake, base)},
                  run_frames=args.run_frames,
                  hashing={"seconds": seconds_hashing, "video_seconds": video_seconds})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
