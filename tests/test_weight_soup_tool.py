"""tools/weight_soup.py: averages floating tensors exactly, keeps integer counters, refuses what cannot average."""

import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import weight_soup as tool  # noqa: E402

SHIPPED = ROOT / "models" / "deepscan-sbi-lite0.json"


def test_average_states_means_floats_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    out = tool.average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 5 and out["w"].dtype == torch.float32


def test_average_states_refuses_mismatches():
    with pytest.raises(ValueError, match="different tensors"):
        tool.average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shapes"):
        tool.average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_soup_of_a_model_with_itself_is_that_model(tmp_path):
    from safetensors.torch import load_file

    from deepscan.detector.card import ModelCard

    card_path = tool.soup([SHIPPED, SHIPPED], "self-soup", tmp_path)
    card = ModelCard.load(card_path)
    assert card.verify_weights() == card.sha256
    original, averaged = load_file(str(ModelCard.load(SHIPPED).weights_path)), load_file(str(card.weights_path))
    assert original.keys() == averaged.keys()
    assert all(torch.equal(original[k], averaged[k]) for k in original)
    assert card.metrics == {} and len(card.extra["soup_of"]) == 2


def test_soup_refuses_different_training_seeds(tmp_path):
    data = json.loads(SHIPPED.read_text())
    data["training"]["config"]["seed"] = 99
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    shutil.copy(SHIPPED.with_suffix(".safetensors"), tmp_path / data["weights"])
    with pytest.raises(ValueError, match="seeds"):
        tool.soup([SHIPPED, other], "mixed", tmp_path / "out")
