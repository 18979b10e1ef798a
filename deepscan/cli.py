"""Command line: ``deepscan scan|probe|models|cache|landmarks|recon|train|calibrate|eval``. A thin layer over :class:`Scanner`.

Exit status of ``scan``: 1 if any video was judged fake; otherwise 2 if any input failed or the command was
misused; otherwise 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

EXIT_OK, EXIT_FAKE, EXIT_ERROR = 0, 1, 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _thread_count(text: str) -> int:
    from .runtime import check_threads

    value = _positive_int(text)
    try:
        check_threads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("threads must be", "must be")
                                         .replace("; 0: every core", "")) from None
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _positive_finite(text: str) -> float:
    value = _positive_float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number")
    return value


def _rate(text: str) -> float:
    value = _probability(text)
    if value >= 1.0:  # every real flagged: a percentage typed as a number (5 for 5%) lands here too
        raise argparse.ArgumentTypeError(f"must be below 1 (0.05 is 5%), not {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan (every comparison with it is false) and inf
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .video import MAX_DURATION_S, MAX_PIXELS

    parser = argparse.ArgumentParser(prog="deepscan", description="Screen videos for face manipulation.")
    parser.add_argument("--version", action="version", version=f"deepscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="screen video files and folders")
    s.add_argument("paths", nargs="+", help="video files or folders (searched recursively)")
    s.add_argument("--detector", help="detector name (see `deepscan models`) or a model-card JSON path")
    s.add_argument("--weights", help="weights file for the detector (e.g. a MesoNet .h5)")
    sampling = s.add_mutually_exclusive_group()
    sampling.add_argument("--frames", type=_positive_int, default=32,
                          help="frames sampled, one in each of N equal slices, placed by the file's hash (default 32)")
    sampling.add_argument("--fps", type=_positive_finite, help="instead: one frame in each 1/R-s interval, placed alike")
    s.add_argument("--out", type=Path, help="directory for results.jsonl (one line per video, as each finishes)")
    s.add_argument("--json", action="store_true", help="print one JSON line per video instead of the table")
    s.add_argument("--html", action="store_true",
                   help="also write report.html, videos.csv, frames.csv and evidence images (assets/) into --out")
    s.add_argument("--force", action="store_true",
                   help="re-screen videos that already have a result in --out for the same model and settings")
    s.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="detector precision; auto: fp16 on CUDA, bf16 on CPUs with bf16 instructions when the "
                        "model card has a bf16 threshold, else fp32")
    s.add_argument("--threads", type=_thread_count, help="CPU threads for torch (default: all cores; at most 4 "
                                                         "per core)")
    s.add_argument("--threshold", type=_probability, help="override the model card's decision threshold (0 to 1)")
    s.add_argument("--batch-faces", type=_positive_int,
                   help="faces per detector batch (default 16 on CPU, 64 on CUDA)")
    s.add_argument("--full-detect-every", type=_positive_int, default=4, metavar="N",
                   help="search every Nth sampled frame for faces of any size; the frames between follow the faces "
                        "found (default 4; 1 = a full search on every frame)")
    s.add_argument("--no-follow-faces", dest="follow_faces", action="store_false",
                   help="between full searches, search for faces at least half as large as those found instead "
                        "of following them (slower)")
    s.add_argument("--max-side", type=_positive_int, default=1920, help="downscale larger frames to this")
    s.add_argument("--keyframes-only", action="store_true",
                   help="in videos of a minute or more sampled at least 4 s apart, decode keyframes only (time flat "
                        "in length; but a file's author who keeps its keyframes real can pass a fake as real)")
    s.add_argument("--hwaccel", default="none",
                   help="hardware video decoding: none (default) or an ffmpeg -hwaccel name such as cuda (NVDEC); "
                        "the same frames; falls back to CPU decoding where it fails")
    s.add_argument("--timeout", type=_positive_float, default=600.0,
                   help="seconds one video's scan may wait for its decoder (time spent on its faces does not count)")
    s.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS,
                   help=f"refuse videos with frames larger than this, before decoding (default {MAX_PIXELS})")
    s.add_argument("--max-duration", type=_positive_float, default=MAX_DURATION_S,
                   help=f"refuse videos longer than this many seconds (default {MAX_DURATION_S:.0f} = 4 h)")
    s.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=None,
                   help="group copies of the same video (vPDQ hashes made while decoding) and screen verified "
                        "pixel copies once (default: on when pdqhash is installed)")
    s.add_argument("--provenance", action=argparse.BooleanOptionalAction, default=True,
                   help="read container tags, edit lists and C2PA credentials (default: on; never changes scores)")
    s.add_argument("--c2pa-trust", type=Path, metavar="PEM",
                   help="C2PA trust anchors (PEM) that make a signer trusted (default: $DEEPSCAN_C2PA_TRUST_ANCHORS)")

    p = sub.add_parser("probe", help="print what the video stage sees in a file")
    p.add_argument("video")
    p.add_argument("--json", action="store_true")

    sub.add_parser("models", help="list known detectors and where their weights are")

    r = sub.add_parser("report", help="rebuild report.html and the CSV exports from DIR/results.jsonl")
    r.add_argument("dir", type=Path)

    c = sub.add_parser("cache", help="build the training face-crop cache from a clips MANIFEST.tsv")
    c.add_argument("manifest", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--frames", type=_positive_int, default=32, help="frames sampled evenly over each clip (default 32)")
    c.add_argument("--context-margin", type=_positive_finite, default=1.0,
                   help="context cached around each face: the crop's side is the box's longer side x (1 + this) "
                        "(default 1.0); a model's crop margin and box jitter must stay inside it")

    lm = sub.add_parser("landmarks", help="add dlib's 68-point landmarks to a crop cache (extra 'landmarks'), for "
                                          "self-blends shaped like SBI's (train.sbi_dense_landmarks)")
    lm.add_argument("cache", type=Path)
    lm.add_argument("--predictor", type=Path, default=None,
                    help="dlib's shape_predictor_68_face_landmarks.dat (default: Debian libdlib-data's)")

    rc = sub.add_parser("recon", help="train a face autoencoder on a training config's real faces and cache its "
                                      "renderings of them, for self-blends with a decoder's texture "
                                      "(train.sbi_p_recon)")
    rc.add_argument("config", type=Path, help="training config (TOML): its cache, training reals and split seed")

    e = sub.add_parser("eval", help="video-level ROC AUC and rates of detectors on labelled clips")
    e.add_argument("labels", type=Path, help="TSV/CSV with path,label columns, or a MANIFEST.tsv")
    e.add_argument("--detector", action="append", default=[],
                   help="detector name or card path; repeat to compare (default: the embedded model)")
    e.add_argument("--weights", action="append", default=[],
                   help="weights for the --detector at the same position (use '-' for the default)")
    # Scan settings default to None so that, with --results (no scan), a setting given can be told from none.
    e.add_argument("--frames", type=_positive_int, help="frames sampled evenly, as for scan (default 32)")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="detector precision, as for scan (default auto)")
    e.add_argument("--full-detect-every", type=_positive_int, metavar="N", help="as for scan (default 4)")
    e.add_argument("--no-follow-faces", dest="follow_faces", action="store_false", default=None, help="as for scan")
    e.add_argument("--subset", type=Path,
                   help="model card whose training.validation_files restricts the clips (its held-out split)")
    e.add_argument("--out", type=Path, help="directory for metrics.json, roc.png and per-detector results "
                                            "(clips a detector already scanned there alike are not scanned again)")
    e.add_argument("--force", action="store_true", help="scan every clip again even if --out holds its result")
    e.add_argument("--results", type=Path, action="append", default=[],
                   help="score an earlier scan's results.jsonl instead of scanning (repeatable)")

    k = sub.add_parser("calibrate", help="refit a model card's threshold on deepscan scan's own video scores of "
                                         "its held-out split")
    k.add_argument("card", type=Path, help="model card JSON (rewritten: threshold and metrics.scanner)")
    k.add_argument("labels", type=Path, help="the MANIFEST.tsv (or path,label TSV/CSV) of the training clips")
    k.add_argument("--frames", type=_positive_int, default=32, help="frames per video, as the scans will use")
    k.add_argument("--max-fpr", type=_rate, default=0.05,
                   help="false-positive rate allowed on validation reals, from 0 to 1 (default 0.05: 5%%)")
    k.add_argument("--results", type=Path, help="an earlier scan's results.jsonl of those clips (no rescanning); "
                                                "only lines scanned with this card (weights and scoring settings), "
                                                "at --precision and --frames, count")
    k.add_argument("--out", type=Path, help="keep the scan's results.jsonl here")
    k.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fit the threshold for scores at this precision (default fp32: the card's threshold; "
                        "bf16 is what --precision auto uses on CPUs with bf16 instructions)")

    v = sub.add_parser("validate", help="re-measure trained model cards on their own validation split of the crop "
                                        "cache: AUC, degradation probe and swap probe")
    v.add_argument("cards", type=Path, nargs="+",
                   help="model card JSON files; with several, each is also compared with the first, clip for clip")
    v.add_argument("--cache", type=Path, default=Path("cache/crops"), help="the crop cache they were trained on")
    v.add_argument("--json", type=Path, help="also write the measurements here, one object per card")

    t = sub.add_parser("train", help="train a detector from a TOML config")
    t.add_argument("config", type=Path)
    t.add_argument("--no-resume", action="store_true", help="start over instead of resuming the last checkpoint")
    t.add_argument("--precision", choices=("bf16", "fp32"),
                   help="override train.precision (bf16 autocast is emulated, and far slower, on CPUs without bf16 "
                        "instructions)")
    return parser


def cmd_scan(args) -> int:
    from .evidence import drop_pixels
    from .report import ScanProgress, make_console, print_summary
    from .scanner import Scanner, ScanOptions
    from .video import discover

    console = make_console(sys.stderr if args.json else sys.stdout)
    if args.html and not args.out:
        _print_error(console, "--html needs --out DIR")
        return EXIT_ERROR
    if args.out and args.out.exists() and not args.out.is_dir():
        _print_error(console, f"--out {args.out} exists and is not a directory")
        return EXIT_ERROR
    if args.c2pa_trust and not args.c2pa_trust.is_file():
        _print_error(console, f"--c2pa-trust: no such file {args.c2pa_trust}")
        return EXIT_ERROR
    options = ScanOptions(detector=args.detector, weights=args.weights, frames=args.frames, fps=args.fps,
                          device=args.device, precision=args.precision, threads=args.threads,
                          threshold=args.threshold, batch_faces=args.batch_faces, max_side=args.max_side,
                          keyframes_only=args.keyframes_only, hwaccel=args.hwaccel,
                          full_detect_every=args.full_detect_every, follow_faces=args.follow_faces,
                          timeout_s=args.timeout, max_pixels=args.max_pixels,
                          max_duration_s=args.max_duration, keep_heatmaps=args.html, provenance=args.provenance,
                          c2pa_trust_anchors=str(args.c2pa_trust) if args.c2pa_trust else None)
    scanner = Scanner(options)
    try:
        scanner.detector  # noqa: B018 - fail early and clearly on a bad model, before any video
    except (KeyError, FileNotFoundError, ValueError, RuntimeError) as exc:
        # A KeyError's str() is its message in quotes.
        _print_error(console, exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))
        return EXIT_ERROR
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    paths = list(discover(args.paths))
    if not paths:
        _print_error(console, "no video files found under " + ", ".join(args.paths))
        return EXIT_ERROR
    results = []
    t0 = time.perf_counter()
    dedupe = args.dedupe is not False and len(paths) > 1
    if dedupe:
        from .campaign import available_backend

        # Why copies cannot be grouped here, as (the error when --dedupe was asked for, the note when not).
        if args.keyframes_only:  # grouping hashes every frame: nothing would be keyframes only, yet results say so
            unable = ("--keyframes-only and --dedupe exclude each other (grouping decodes every frame)",
                      "--keyframes-only: copies of the same video are not grouped (grouping decodes every frame; "
                      "--no-dedupe says this)")
        elif available_backend() != "pdq":  # grouping while screening hashes deepscan's own frames (pdqhash)
            unable = ("--dedupe needs pdqhash: pip install 'deepscan[campaign]'",
                      "copies of the same video are not grouped (pip install 'deepscan[campaign]' for --dedupe)")
        else:
            unable = None
        if unable:
            if args.dedupe:
                _print_error(console, unable[0])
                return EXIT_ERROR
            console.print("note: " + unable[1], style="dim", markup=False)
            dedupe = False
    if args.provenance:
        from .provenance import c2pa_available

        if not c2pa_available():
            console.print("note: C2PA credentials are not checked (pip install 'deepscan[provenance]')",
                          style="dim", markup=False)
    write_failed = None
    with ScanProgress(console, len(paths)) as progress:
        try:
            for result in scanner.scan(paths, out_dir=args.out, progress=progress, force=args.force,
                                       evidence=args.html, dedupe=dedupe):
                drop_pixels(result)  # evidence is on disk; don't keep every crop of a long scan in memory
                results.append(result)
                if args.json:
                    sys.stdout.write(result.to_json() + "\n")
                    sys.stdout.flush()
        except OSError as exc:  # results.jsonl could not be written (a full disk): the scan stops here
            write_failed = exc
        progress.finish()
    if write_failed is not None:
        # Said after the bars are gone; what was judged before still counts (a fake found exits 1).
        _print_error(console, f"the scan stopped: {write_failed} ({len(results)} of {len(paths)} videos done)")
    if not args.json and (results or write_failed is None):
        print_summary(console, results, scanner.threshold, time.perf_counter() - t0)
        groups = scanner.campaign_groups if dedupe else []
        if any(g.size > 1 or g.altered for g in groups):
            from .campaign import campaign_table

            console.print(campaign_table(results, groups))
        if args.out:
            resumed = sum(r.resumed for r in results)
            note = f" ({resumed} already there, not re-screened; --force re-does them)" if resumed else ""
            console.print(f"results: {args.out / 'results.jsonl'}{note}", markup=False)
    report_failed = False
    if args.html:
        from jinja2 import TemplateError

        from .html import build_report

        try:
            console.print(f"report: {build_report(args.out)}", markup=False)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, TemplateError) as exc:
            # The results are on disk whatever befell the report, and a fake found must still exit 1.
            _print_error(console, f"report.html not written ({type(exc).__name__}: {exc}); the results are in "
                                  f"{args.out / 'results.jsonl'}: retry with deepscan report {args.out}")
            report_failed = True
    if any(r.verdict == "fake" for r in results):
        return EXIT_FAKE
    # Each warned about as it happened; a resumed line's old failure is this run's concern only with --html.
    evidence_failed = args.html and any("evidence_error" in r.extra and not r.resumed for r in results)
    if (report_failed or evidence_failed or write_failed or missing
            or any(r.status == "error" for r in results)):
        return EXIT_ERROR
    return EXIT_OK


def cmd_probe(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from .report import make_console
    from .results import shown
    from .video import VideoError, ffmpeg_exe, probe

    console = make_console()
    try:
        info = probe(args.video)
    except VideoError as exc:
        _print_error(console, f"{args.video}: {exc}")
        return EXIT_ERROR
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return EXIT_OK
    # Text, never rich markup, and shown escaped: a file named "clip[red]x.mp4" was titled "clipx.mp4".
    table = Table(title=Text(shown(str(args.video))), show_header=False)
    for key, value in info.to_dict().items():
        table.add_row(key, Text(shown(str(value))))
    table.add_row("ffmpeg", Text(shown(ffmpeg_exe())))
    console.print(table)
    return EXIT_OK


def cmd_report(args) -> int:
    from .html import build_report

    if not (args.dir / "results.jsonl").is_file():
        print(f"deepscan: error: no results.jsonl in {args.dir}", file=sys.stderr)
        return EXIT_ERROR
    from .html import MissingEvidenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingEvidenceWarning)
        report = build_report(args.dir)
    print(report)
    missing = [w for w in caught if issubclass(w.category, MissingEvidenceWarning)]
    for w in missing:
        print(f"deepscan: warning: {w.message}", file=sys.stderr)
    return EXIT_ERROR if missing else EXIT_OK


def cmd_models(_args) -> int:
    from rich.table import Table
    from rich.text import Text

    from .detector import ModelCard, default_model_name, find_cards, find_weights
    from .report import make_console
    from .results import shown

    console = make_console()
    table = Table(title="detectors", header_style="bold")
    for col in ("name", "architecture", "input", "heatmap", "threshold", "weights", "card"):
        table.add_column(col, overflow="fold")
    models, ambiguous = find_cards()
    for name, card_path in sorted(models.items()):
        card = ModelCard.load(card_path)
        try:
            weights = str(find_weights(card))
        except FileNotFoundError:
            weights = f"(not found: {card.weights}; pass --weights)"
        label = name + (" (default)" if name == default_model_name() else "")
        if name in ambiguous:  # every scan by this name is refused: say so here, and what to pass instead
            label += " (ambiguous: " + ", ".join(p.name for p in ambiguous[name]) + "; pass a card's path)"
        # Cells as text, never rich markup: a card named "x[bold]y" was listed as "xy".
        table.add_row(*(Text(shown(cell)) for cell in (
            label, card.architecture, str(card.input_size), card.heatmap, f"{card.threshold:.3f}", weights,
            str(card_path))))
    console.print(table)
    return EXIT_OK


def cmd_cache(args) -> int:
    from .training.cache import build_cache

    index = build_cache(args.manifest, args.out, frames_per_clip=args.frames, context_margin=args.context_margin)
    print(f"{len(index['clips'])} clips, {sum(c['n_crops'] for c in index['clips'])} face crops → {args.out}")
    for failed in index.get("failed", []):
        print(f"deepscan: warning: {failed['file']}: not cached ({failed['error']})", file=sys.stderr)
    return EXIT_ERROR if index.get("failed") else EXIT_OK


def cmd_landmarks(args) -> int:
    from .training.landmarks68 import DEFAULT_PREDICTOR, add_dense_landmarks

    done = add_dense_landmarks(args.cache, args.predictor or DEFAULT_PREDICTOR)
    print(f"68 points fitted on {done['fitted']} of {done['frames']} cached faces → {args.cache}")
    return EXIT_OK


def cmd_recon(args) -> int:
    from .training.recon import recon_dir
    from .training.train import build_reconstructions, load_config

    done = build_reconstructions(args.config)
    out = recon_dir(load_config(args.config)["cache_dir"], done["key"])
    print(f"{done['faces']} training faces rendered by the autoencoder (mean absolute error "
          f"{done['mean_abs_error']} of 255, {done['seconds']} s) → {out}")
    return EXIT_OK


def cmd_eval(args) -> int:
    from .detector import ModelCard
    from .evaluate import evaluate, read_labels
    from .report import eval_tables, make_console
    from .results import json_safe

    console = make_console()
    subset = None
    if args.subset:
        subset = set(ModelCard.load(args.subset).training.get("validation_files") or [])
        if not subset:
            _print_error(console, f"{args.subset} names no validation_files")
            return EXIT_ERROR
    clips = read_labels(args.labels, subset)
    if not clips or len({c.label for c in clips}) < 2:
        _print_error(console, "need labelled real and fake clips")
        return EXIT_ERROR
    names = args.detector or [None]
    weights = args.weights + ["-"] * (len(names) - len(args.weights))
    specs = [{"detector": n, "weights": None if w == "-" else w} for n, w in zip(names, weights, strict=False)]
    if args.results:
        from .evaluate import metrics_from_results, pair_with_first

        ignored = [flag for flag, value in (("--detector", args.detector), ("--weights", args.weights),
                                            ("--frames", args.frames), ("--precision", args.precision),
                                            ("--full-detect-every", args.full_detect_every),
                                            ("--no-follow-faces", args.follow_faces is False), ("--force", args.force))
                   if value not in (None, False, [])]
        if ignored:
            console.print(f"note: {', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} for scanning; with "
                          "--results the scores are those the results files hold, as they were scanned",
                          style="dim", markup=False)
        entries = [metrics_from_results(clips, p) for p in args.results]
        # Two results files of one model (two scans, two runs) are told apart by their file.
        names = Counter(e["detector"] for e in entries)
        for entry, path in zip(entries, args.results, strict=True):
            entry["results"] = str(path)
            if names[entry["detector"]] > 1:
                entry["detector"] = f"{entry['detector']} ({path})"
        pair_with_first(entries)
        report = {"n_clips": entries[0]["n_clips"], "n_fake": entries[0]["n_fake"], "detectors": entries}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "metrics.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        given = {"frames": args.frames, "precision": args.precision, "full_detect_every": args.full_detect_every,
                 "follow_faces": args.follow_faces}
        report = evaluate(clips, specs, out_dir=args.out, force=args.force,
                          **{k: v for k, v in given.items() if v is not None})
    sampled = "scored from results.jsonl" if args.results else f"{report['frames']} frames each"
    for table in eval_tables(report, sampled):
        console.print(table)
    for d in report["detectors"]:  # each clip not scored, by name: an error is left out, no face scores 0
        for u in d["unscored"]:
            why = "left out" if u.get("status") == "error" else "scored 0"
            console.print(f"{d['detector']}: {u['path']}: {u.get('status')}, {why}"
                          + (f" ({u['error']})" if u.get("error") else ""), markup=False)
    for d in report["detectors"]:
        fitted = d["at_threshold"].get("fitted_on_clips")
        if fitted:
            console.print(f"{d['detector']}: its threshold was chosen on {fitted} of these {d['n_clips']} clips (its "
                          "card's validation split), so its accuracy, TPR and FPR here are not held-out figures",
                          markup=False)
    if args.out:
        console.print(f"metrics: {args.out / 'metrics.json'}" + ("" if args.results else f", ROC: {args.out / 'roc.png'}"),
                      markup=False)
        for d in report["detectors"]:
            if d.get("resumed"):
                console.print(f"{d['detector']}: {d['resumed']} of {report['n_clips']} clips taken from "
                              f"{args.out / d['detector'] / 'results.jsonl'}, not scanned again (--force re-does them)",
                              markup=False)
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from .evaluate import calibrate
    from .report import make_console

    console = make_console()
    try:
        m = calibrate(args.card, args.labels, frames=args.frames, max_fpr=args.max_fpr, results_path=args.results,
                      out_dir=args.out, precision=args.precision)
    except (OSError, ValueError) as exc:
        _print_error(console, str(exc))
        return EXIT_ERROR
    console.print(f"{args.card} ({m['precision']}): threshold {m['threshold_before']:.4f} -> "
                  f"{m['threshold']:.4f} ({m['videos']} validation videos, {m['frames']} frames each); "
                  f"AUC {m['video_auc']:.3f} [{m['video_auc_ci95'][0]:.3f}, {m['video_auc_ci95'][1]:.3f}], "
                  f"TPR {m['tpr_at_threshold']:.3f}, FPR {m['fpr_at_threshold']:.3f}", markup=False)
    return EXIT_OK


def cmd_validate(args) -> int:
    from rich.table import Table

    from .report import make_console
    from .results import json_safe
    from .training.data import PROBE_DEGRADATIONS
    from .training.train import validate_card

    console = make_console()
    table = Table(title="validation crops, video AUC (mean real score); swap probe: AUC [95% CI, pairs resampled]; "
                        "swap probe degraded: the same degradations in order; box probe: mean |score "
                        "change| when the face box moves 5% or is scaled 7-8%")
    probes = ("none", *PROBE_DEGRADATIONS)
    for col in ("card", *probes, "swap probe", "swap probe degraded", "box probe"):
        table.add_column(col, justify="left" if col == "card" else "right")
    # What can fail in seconds fails before minutes of measuring, not after them.
    from .detector import ModelCard, WeightsMismatch

    for card in args.cards:
        try:
            ModelCard.load(card)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _print_error(console, f"{card}: {exc}")
            return EXIT_ERROR
    if args.json and not args.json.parent.is_dir():
        _print_error(console, f"--json {args.json}: no folder {args.json.parent}")
        return EXIT_ERROR
    measured, failed = {}, False
    for card in args.cards:
        try:
            m = validate_card(card, args.cache)
        except (OSError, ValueError, KeyError, WeightsMismatch) as exc:
            # The other cards are still measured, shown and written.
            _print_error(console, f"{card}: {exc}")
            failed = True
            continue
        measured[str(card)] = m
        swap = m["swap_probe"]
        cells = ["—" if c["video_auc"] is None else f"{c['video_auc']:.3f} ({c['mean_real_score']:.2f})"
                 for c in (m["degradation_probe"][p] for p in probes)]
        if swap is None:
            cells += ["—", "—"]
        else:
            lo, hi = swap["video_auc_ci95"]
            cells += [f"{swap['video_auc']:.3f} [{lo:.2f}, {hi:.2f}]",
                      " / ".join(f"{swap['degraded'][p]['video_auc']:.3f}" for p in probes[1:])]
        cells.append(f"{m['box_probe']['mean_abs_score_change']:.3f}")
        table.add_row(str(card), *cells)
    console.print(table)
    if len(measured) > 1:
        console.print(_paired_table(measured))
    if args.json and measured:  # a run that measured nothing leaves an earlier file as it was
        args.json.write_text(json.dumps(json_safe(measured), indent=1, allow_nan=False) + "\n")
    return EXIT_ERROR if failed else EXIT_OK


def _print_error(console, message: str) -> None:
    """``deepscan: error: message`` on stderr, whatever ``console`` prints to (stdout carries results, e.g.
    ``--json`` lines), with the message as plain text: paths and exception texts may hold "[...]", which rich
    would read as markup (text lost, or a MarkupError in place of the error)."""
    from rich.text import Text

    from .report import make_console

    # One line: a library's message may span several (torch's CUDA errors do).
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    make_console(sys.stderr).print(Text.assemble(("deepscan: error:", "bold red"), " ", message))


def _paired_table(measured: dict):
    """Each card against the first on the same clips: AUC differences with a paired bootstrap 95% interval
    (written into ``measured`` too, as ``paired_with_first``)."""
    from rich.table import Table

    from .evaluate import paired_difference
    from .report import paired_cell

    cards = list(measured)
    first = measured[cards[0]]["video_scores"]
    table = Table(title=f"against {cards[0]}: AUC difference [paired bootstrap 95% CI]")
    for col in ("card", "validation crops", "swap probe"):
        table.add_column(col, justify="left" if col == "card" else "right")
    for card in cards[1:]:
        scores, cells, paired = measured[card]["video_scores"], [], {}
        for probe in ("validation", "swap_probe"):
            pair = paired_difference(first.get(probe), scores.get(probe))
            if pair is None:
                cells.append("other clips")  # another split: no pairing
                continue
            paired[probe] = pair
            cells.append(paired_cell(pair))
        measured[card]["paired_with_first"] = paired
        table.add_row(card, *cells)
    return table


def cmd_train(args) -> int:
    from .training.train import train

    overrides = {"train": {"precision": args.precision}} if args.precision else None
    train(args.config, resume=not args.no_resume, overrides=overrides)
    return EXIT_OK


COMMANDS = {"scan": cmd_scan, "probe": cmd_probe, "models": cmd_models, "report": cmd_report, "cache": cmd_cache,
            "landmarks": cmd_landmarks, "recon": cmd_recon, "train": cmd_train, "validate": cmd_validate,
            "calibrate": cmd_calibrate,
            "eval": cmd_eval}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """deepscan's own warnings as one line on stderr (the default adds a file name and a source line meant
    for developers); other libraries' keep the default form."""
    if category.__module__.startswith("deepscan"):
        print(f"deepscan: warning: {message}", file=file or sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a traceback's exit status 1 would read as "a video judged fake"
        if os.environ.get("DEEPSCAN_DEBUG"):
            import traceback

            traceback.print_exc()
            return EXIT_ERROR  # not the interpreter's 1, which means "a video judged fake"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, OSError):  # an OSError's text says what failed; others need their kind
            message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        print(f"deepscan: error: {message} (DEEPSCAN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
