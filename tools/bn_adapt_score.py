"""Does normalising each clip's BatchNorm statistics toward its own faces rank videos better?

The shipped model's held-out real clips score from 0.09 to 0.91 (issue #3), the highest from footage unlike any
training group (film, an 80s music video), while it orders the two halves of every held-out DeepFaceLive demo
right: part of a score follows the footage. Test-time BatchNorm adaptation (Schneider et al., NeurIPS 2020,
"Improving robustness against common corruptions by covariate shift adaptation") normalises each layer with a mix
of its training statistics and those of the input at hand, weighted ``prior / (prior + n)`` and ``n / (prior + n)``
for ``n`` faces; here the faces are one clip's, so the footage's own feature statistics are (partly) taken out
before the classifier reads them. A fake clip is normalised by its own faces too, which may take out part of its
evidence: only a measurement tells. Measured offline here before any scanner change.

Run from the repository root, after ``deepscan cache``::

    python tools/bn_adapt_score.py CARD [CARD ...] [--prior 16 0]

For each card, on its held-out validation crops (8 frames a clip, cut as at inference, as ``deepscan validate``)
and on its swap probe (held-out reals against the same frames with another's face swapped in, JPEG 90), video
AUC of the scanner's score (``scoring.track_score`` of the calibrated probabilities) and of the mean face logit,
without adaptation (``plain``, the figure ``deepscan validate`` prints) and with each prior; paired bootstrap 95%
intervals against ``plain`` (the same resamples; swap-probe pairs resampled whole).

Rule, written before the first run (session 44): worth building into the scanner only if the scanner's score with
prior 16 (fixed in advance: the paper's prior strength for small target batches; with 8 faces the clip's own
statistics weigh 1/3) ranks higher than ``plain`` on the validation crops and on the swap probe, for the shipped
model and for the seed-3 control (runs/experiments/sbi-lite0-tone-3600-seed3-freeze2-wd005-fp32.json); then it
must still be measured on the held-out footage through ``deepscan eval``. Prior 0 (the clip's statistics alone)
is printed for information and decides nothing. Deterministic: no random draws.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_blend_score import Faces, swap_probe_faces, validation_faces  # noqa: E402

from deepscan.crops import crop_face  # noqa: E402
from deepscan.evaluate import bootstrap_auc_difference  # noqa: E402
from deepscan.scoring import track_score  # noqa: E402
from deepscan.training.train import _auc, _sigmoid, load_card_validation, predict_logits  # noqa: E402


@contextlib.contextmanager
def adapted_batchnorm(net, prior: float):
    """Within the block, every BatchNorm layer of ``net`` normalises a batch of ``n`` with its running statistics
    mixed with the batch's own, weights ``prior/(prior+n)`` and ``n/(prior+n)``; eval mode keeps everything else
    (dropout off, running statistics untouched)."""
    import torch

    handles = []

    def before(module, inputs):
        x = inputs[0]
        n = x.shape[0]
        w = n / (prior + n)
        module._saved_stats = (module.running_mean, module.running_var)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        module.running_mean = (1 - w) * module.running_mean + w * mean
        module.running_var = (1 - w) * module.running_var + w * var

    def after(module, inputs, output):
        module.running_mean, module.running_var = module._saved_stats
        del module._saved_stats

    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def clip_crops(cv, faces: list[Faces]) -> list[np.ndarray]:
    """Per clip, its faces cut as at inference (once, for every prior)."""
    card = cv.card
    return [np.stack([crop_face(img, box, card.crop_margin, card.input_size)
                      for img, box in zip(f.images, f.boxes, strict=True)]) for f in faces]


def clip_logits(cv, crops: list[np.ndarray], prior: float | None) -> list[np.ndarray]:
    """Per clip, its faces' logits, each clip one batch (so adaptation sees that clip's faces only)."""
    out = []
    for clip in crops:
        with adapted_batchnorm(cv.net, prior) if prior is not None else contextlib.nullcontext():
            out.append(predict_logits(cv.net, cv.card, clip, batch_size=len(clip)))
    return out


def compare(cv, faces: list[Faces], priors: list[float], name: str) -> None:
    labels = np.array([f.label for f in faces])
    groups = [f.group for f in faces] if name == "swap probe" else None
    print(f"  {name}: {len(faces)} clips ({int(labels.sum())} fake)")
    crops = clip_crops(cv, faces)
    plain = None
    for prior in [None, *priors]:
        logits = clip_logits(cv, crops, prior)
        scores = {
            "score": np.array([track_score(_sigmoid(x / cv.card.temperature)) for x in logits]),
            "mean logit": np.array([x.mean() for x in logits]),
        }
        real, fake = scores["mean logit"][labels == 0], scores["mean logit"][labels == 1]
        tag = "plain" if prior is None else f"prior {prior:g}"
        line = f"    {tag:<9}"
        for key, s in scores.items():
            line += f" {key} AUC {_auc(labels, s):.3f}"
            if plain is not None:
                diff, lo, hi = bootstrap_auc_difference(labels, plain[key], s, groups=groups)
                line += f" ({diff:+.3f} [{lo:+.3f}, {hi:+.3f}])"
            line += ";"
        print(f"{line} mean logit real {real.mean():.2f} (sd {real.std():.2f}) / fake {fake.mean():.2f}")
        if plain is None:
            plain = scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+")
    parser.add_argument("--prior", type=float, nargs="+", default=[16.0, 0.0],
                        help="prior strengths, in faces (default 16 0)")
    parser.add_argument("--cache", default="cache/crops")
    args = parser.parse_args(argv)
    for card in args.cards:
        cv = load_card_validation(card, args.cache)
        frames = cv.config["val"]["frames_per_clip"]
        print(f"{card}: {frames} frames a clip, one batch a clip")
        compare(cv, validation_faces(cv.clips, frames), args.prior, "validation crops")
        compare(cv, swap_probe_faces(cv.clips, frames), args.prior, "swap probe")


if __name__ == "__main__":
    main()
