"""Average the weights of fine-tuned runs that share their initialisation (a uniform "model soup").

Wortsman et al. (ICML 2022, "Model soups") average the weights of models fine-tuned from one pretrained start
with different recipes, and find the average as accurate as the best ingredient and more robust out of
distribution, at the cost of one model. deepscan's runs start from the same ImageNet backbone; runs with the same
training seed also start from the same random heads, which averaging needs (a head averaged with an unrelated
random head is noise), so the tool refuses cards of different seeds.

Run from the repository root::

    python tools/weight_soup.py CARD CARD [CARD ...] --name NAME [--out runs/soups]

Writes ``NAME.safetensors`` and ``NAME.json`` in ``--out``: floating tensors (BatchNorm running statistics
included) are averaged, integer ones (BatchNorm's batch counters) taken from the first card; the card is the
first card's with the name, weights, sha256 and description replaced, the temperature the ingredients' mean, and
the first card's metrics dropped (they describe another model): re-measure the soup with ``deepscan validate``
and ``deepscan eval``, and fit its threshold with ``deepscan calibrate``.

Rule, written before the first soup was scored (session 45): a first draw is the soup of the shipped model and
the exposure/contrast run of the same seed (configs/experiments/...-seed1-freeze2-wd005-exposure-fp32.toml); it
earns a second draw (two seed-3 runs) only if it is higher than the shipped model on the held-out footage and the
validation crops, and ships only by the standing rule (higher on both on two training seeds).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepscan.detector.card import ModelCard, sha256_file  # noqa: E402

# What must agree for two weight files to be the same network reading the same crops.
SAME_CONTRACT = ("architecture", "input_size", "mean", "std", "crop_margin")


def average_states(states: list[dict]) -> dict:
    """Uniform average of floating tensors; integer tensors from the first state. Refuses mismatched keys/shapes."""
    import torch

    first = states[0]
    for other in states[1:]:
        if other.keys() != first.keys():
            unshared = sorted(set(first) ^ set(other))[:3]
            raise ValueError(f"the weight files hold different tensors (e.g. {unshared})")
        for key, tensor in first.items():
            if other[key].shape != tensor.shape:
                raise ValueError(f"{key}: shapes {tuple(tensor.shape)} and {tuple(other[key].shape)} differ")
    averaged = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            total = torch.zeros_like(tensor, dtype=torch.float64)
            for state in states:
                total += state[key].double()
            averaged[key] = (total / len(states)).to(tensor.dtype).contiguous()
        else:
            averaged[key] = tensor.clone().contiguous()
    return averaged


def _training_seed(card: ModelCard):
    return (card.training or {}).get("config", {}).get("seed")


def soup(card_paths: list[Path], name: str, out_dir: Path) -> Path:
    from safetensors.torch import load_file, save_file

    cards = [ModelCard.load(p) for p in card_paths]
    for card in cards[1:]:
        for field in SAME_CONTRACT:
            if getattr(card, field) != getattr(cards[0], field):
                raise ValueError(f"{card.name}: {field} differs from {cards[0].name}'s")
        if (card.extra or {}).get("net") != (cards[0].extra or {}).get("net"):
            raise ValueError(f"{card.name}: network settings differ from {cards[0].name}'s")
    seeds = {_training_seed(card) for card in cards}
    if len(seeds) != 1 or None in seeds:
        raise ValueError(f"training seeds {sorted(map(str, seeds))}: only runs that share their random heads average")
    states = []
    for card in cards:
        card.verify_weights()
        states.append(load_file(str(card.weights_path)))

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.safetensors"
    save_file(average_states(states), str(weights_path))  # no metadata, so equal weights hash equal
    result = copy.deepcopy(cards[0])
    result.name = name
    result.weights = weights_path.name
    result.sha256 = sha256_file(weights_path)
    result.temperature = float(sum(card.temperature for card in cards) / len(cards))
    result.metrics = {}
    result.description = "Uniform weight average (model soup) of " + ", ".join(card.name for card in cards) + "."
    result.extra = {**(cards[0].extra or {}), "soup_of": [{"name": card.name, "sha256": card.sha256} for card in cards]}
    card_path = out_dir / f"{name}.json"
    result.save(card_path)
    return card_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/soups"))
    args = parser.parse_args(argv)
    if len(args.cards) < 2:
        parser.error("a soup needs at least two cards")
    card_path = soup(args.cards, args.name, args.out)
    print(f"wrote {card_path}; its threshold is the first card's until `deepscan calibrate` refits it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
