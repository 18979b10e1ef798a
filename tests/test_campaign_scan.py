"""`scan --dedupe` end to end: a verified copy takes its source's result (marked), everything else is screened."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SAMPLE_CLIPS, ffmpeg

from deepscan.campaign import available_backend
from deepscan.cli import main

pytestmark = pytest.mark.skipif(available_backend() != "pdq", reason="pdqhash is not installed")


def test_dedupe_scan_inherits_only_verified_copies(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "a_original.mp4")
    shutil.copy(SAMPLE_CLIPS / "carphone_faceswap_fake.mp4", src / "c_faceswap.mp4")
    ffmpeg("-i", str(src / "a_original.mp4"), "-c:v", "libx264", "-crf", "30", "-an", str(src / "b_reupload.mp4"))
    out = tmp_path / "out"
    code = main(["scan", str(src), "--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"])
    assert code in (0, 1)
    lines = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)
             for line in (out / "results.jsonl").read_text().splitlines()}
    original, copy, fake = lines["a_original.mp4"], lines["b_reupload.mp4"], lines["c_faceswap.mp4"]
    assert original["extra"]["campaign"]["is_representative"] is True
    assert copy["extra"]["campaign"]["inherited"] is True
    assert copy["extra"]["campaign"]["screened_as"].endswith("a_original.mp4")
    assert (copy["verdict"], copy["score"]) == (original["verdict"], original["score"])
    assert copy["frames"] == [] and copy["sha256"] != original["sha256"]
    # The face-swapped copy has the same footage: it is screened on its own pixels, never inherited.
    assert not (fake.get("extra", {}).get("campaign") or {}).get("inherited")
    assert fake["n_frames"] == 4
    assert "provenance" in original["extra"]
