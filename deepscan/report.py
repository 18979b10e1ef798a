"""Report stage: live progress while scanning and a terminal summary (rich), respecting NO_COLOR and pipes."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .results import VideoResult, decimals_to_compare, shown, verdict_cuts

VERDICT_STYLE = {"fake": "bold red", "uncertain": "bold yellow", "real": "green", "no_face": "dim",
                 "error": "magenta"}

VERDICT_MEANING = {
    "fake": "the most suspicious person scored at or above the model's threshold",
    "uncertain": "a score just below the threshold: look at it yourself",
    "real": "every person scored clearly below the threshold",
    "no_face": "no face was found in any sampled frame, so nothing was judged",
    "error": "the file could not be screened (see the message)",
}


def make_console(stream=None) -> Console:
    stream = stream or sys.stdout
    # rich honours NO_COLOR itself; a pipe or CI log gets plain text and no live bars.
    tty = stream.isatty()
    # Off a terminal rich assumes 80 columns; logs and pipes are read later, so keep file names whole.
    return Console(file=stream, no_color="NO_COLOR" in os.environ or None, force_terminal=None if tty else False,
                   width=None if tty else 160, highlight=False)


class ScanProgress:
    """An overall bar over files and a bar for the file in flight; silent when not on a terminal."""

    def __init__(self, console: Console, total: int):
        self.enabled = console.is_terminal
        # markup=False: the description holds a file name, and "[/]" or "[red]" in one is text, not markup.
        self.progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 disable=not self.enabled, transient=False)
        self.overall = self.progress.add_task("videos", total=total)
        self.current = self.progress.add_task("", total=1, visible=False)
        self._started = False

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, path) -> None:
        if self._started:
            self.progress.advance(self.overall)
        self._started = True
        name = shown(Path(path).name)
        self.progress.reset(self.current, total=1, description=f"frames · {name[:40]}", visible=True)

    def update(self, done: int, total: int) -> None:
        self.progress.update(self.current, completed=done, total=max(total, done, 1))

    def finish(self) -> None:
        if self._started:
            self.progress.advance(self.overall)
        self.progress.update(self.current, visible=False)


def _score_text(r: VideoResult, digits: int = 3) -> str:
    if r.score is None:
        return "—"
    if r.score_ci95:
        return f"{r.score:.{digits}f} [{r.score_ci95[0]:.2f}–{r.score_ci95[1]:.2f}]"
    return f"{r.score:.{digits}f}"


def distinct_names(paths) -> dict[str, str]:
    """Each path's file name, or where other paths share that name, as many of its last parts as tell it from
    them (``in/clip.mp4`` and ``old/in/clip.mp4`` → ``in/clip.mp4`` and ``old/in/clip.mp4``; ``a/clip.mp4``
    and ``b/clip.mp4`` → themselves): a copy's "screened" file must be the one meant. Suffixes are counted per
    length, so thousands of files of one name take linear time."""
    by_name: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for p in dict.fromkeys(str(p) for p in paths):
        by_name.setdefault(Path(p).name, []).append((p, Path(p).parts))
    names = {}
    for same in by_name.values():
        left, n = same, 1
        while left:
            counts = Counter(parts[-n:] for _, parts in same)
            undecided = []
            for p, parts in left:
                if counts[parts[-n:]] == 1 or n >= len(parts):
                    names[p] = str(Path(*parts[-n:])) if parts else p
                else:
                    undecided.append((p, parts))
            left, n = undecided, n + 1
    return names


def summary_table(results: list[VideoResult], threshold: float | None = None) -> Table:
    # One precision for the threshold, videos and people, so any two printed numbers compare as the verdicts do.
    digits = decimals_to_compare([(s, verdict_cuts(r.model.get("threshold", threshold), r.model.get("uncertain_band")))
                                  for r in results for s in [r.score] + [t.score for t in r.tracks]])
    title = "deepscan results" + (f" (threshold {threshold:.{digits}f})" if threshold is not None else "")
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("file", overflow="fold")
    table.add_column("verdict")
    table.add_column("score [95% CI]", justify="right")
    table.add_column("faces/tracks", justify="right")
    table.add_column("frames", justify="right")
    table.add_column("time", justify="right")
    with_provenance = any("provenance" in r.extra for r in results)
    if with_provenance:
        from .provenance import provenance_summary

        table.add_column("provenance (claimed by the file)", overflow="fold")
    screened_as = [((r.extra or {}).get("campaign") or {}).get("screened_as") for r in results]
    names = (distinct_names([*(r.path for r in results), *(p for p in screened_as if isinstance(p, str))])
             if any(isinstance(p, str) for p in screened_as) else {})
    for r in sorted(results, key=lambda r: (-(r.score if r.score is not None else -1), r.path)):
        people = ""
        if len(r.tracks) > 1:
            people = " · " + ", ".join(f"#{t.id} {t.score:.{digits}f}" for t in r.tracks if t.counted)
        verdict = Text(r.verdict, style=VERDICT_STYLE.get(r.verdict, ""))
        campaign = r.extra.get("campaign") or {}
        if campaign.get("inherited"):  # not judged on its own pixels: say whose result it is
            source = str(campaign["screened_as"])
            verdict.append(f" (copy of {shown(names.get(source, Path(source).name))})", style="dim")
        # Text, not str: a str cell is read as markup, and paths and container tags are the file's own words.
        row = [Text(shown(r.path)), verdict, Text(_score_text(r, digits) + people), f"{r.n_faces}/{len(r.tracks)}",
               str(r.n_frames), f"{r.timing.get('total_s', 0):.1f}s"]
        if with_provenance:
            row.append(Text(str(provenance_summary(r.extra.get("provenance")))))
        table.add_row(*row)
    return table


def print_summary(console: Console, results: list[VideoResult], threshold: float | None, wall_s: float) -> None:
    console.print(summary_table(results, threshold))
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICT_STYLE}
    parts = [Text(f"{counts[v]} {v}", style=VERDICT_STYLE[v]) for v in VERDICT_STYLE if counts[v]]
    line = Text(f"{len(results)} videos in {wall_s:.1f}s: ")
    for i, p in enumerate(parts):
        line.append_text(p)
        if i < len(parts) - 1:
            line.append(", ")
    console.print(line)
    errors = [r for r in results if r.status == "error"]
    if errors:
        console.print(Text("errors", style="bold magenta"))
        for r in errors:
            console.print(f"  {shown(r.path)}: {shown(r.error)}", markup=False)
    # What the video stage had to work around (a second video stream not screened, a truncated file): the
    # verdict holds for what was screened, and the analyst must know what that was.
    warned = [(r, w) for r in results if r.status != "error" for w in (r.video or {}).get("warnings") or []
              if isinstance(w, str)]
    if warned:
        console.print(Text("video warnings", style="bold yellow"))
        for r, w in warned:
            console.print(f"  {shown(r.path)}: {shown(w)}", markup=False)


def _cell(value, fmt: str = ".3f", none: str = "—") -> Text:
    return Text(none if value is None else format(value, fmt))


def paired_cell(pair: dict) -> str:
    """An AUC difference with its paired interval, as ``+0.024 [-0.053, +0.104]``, and the number of clips it
    is on when some were judged by only one of the two."""
    cell = f"{pair['auc_difference']:+.3f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}]"
    return cell + (f" on {pair['n_clips']} clips" if pair.get("left_out") else "")


def eval_tables(report: dict, sampled: str) -> list[Table]:
    """``deepscan eval``'s tables: one row per detector, then each detector's per-source rows. Every cell is a
    Text: a str cell is read as markup, so an interval "[nan, nan]" (a style tag to rich) would vanish and a
    detector or source name holding "[/]" would raise MarkupError."""
    table = Table(title=Text(f"{report['n_clips']} clips ({report['n_fake']} fake), {sampled}"), header_style="bold")
    for col in ("detector", "AUC", "95% CI", "resampled", "AUC − first's [paired 95% CI]", "threshold", "accuracy",
                "TPR", "FPR", "unscored"):
        table.add_column(col)
    for d in report["detectors"]:
        t, pair = d["at_threshold"], d.get("paired_with_first")
        unit = d.get("resampled") or {"unit": "clip", "n": d.get("n_clips", report["n_clips"])}
        # The precision it ran at, where it says (its threshold is that precision's).
        label = str(d["detector"]) + (f" ({d['precision']})" if d.get("precision") else "")
        table.add_row(Text(label), _cell(d["auc"]),
                      Text(f"[{d['auc_ci95'][0]:.3f}, {d['auc_ci95'][1]:.3f}]"), Text(f"{unit['n']} {unit['unit']}s"),
                      Text("—" if pair is None else paired_cell(pair)), _cell(t["threshold"]), _cell(t["accuracy"]),
                      _cell(t["tpr"]), _cell(t["fpr"]), Text(str(len(d["unscored"]))))
    tables = [table]
    for d in report["detectors"]:
        src = Table(title=Text(f"{d['detector']} per source"), header_style="bold")
        for col in ("source", "n", "fake", "mean score", "AUC", "accuracy", "TPR", "FPR"):
            src.add_column(col)
        for row in d["per_source"]:
            src.add_row(Text(str(row["source"])), Text(str(row["n"])), Text(str(row["n_fake"])),
                        _cell(row["mean_score"]), _cell(row["auc"]), _cell(row["accuracy"]),
                        _cell(None if row["n_fake"] == 0 else row["tpr"]),
                        _cell(None if row["n_fake"] == row["n"] else row["fpr"]))
        tables.append(src)
    return tables
