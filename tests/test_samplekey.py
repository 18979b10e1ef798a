"""The secret key that, with a file's sha256, places its samples: made once, kept, never replaced silently."""

from __future__ import annotations

import os
import stat

import pytest

import deepscan.samplekey as samplekey
from deepscan.samplekey import SampleKeyWarning, file_seed, key_id, load_sample_key


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "data" / "sample.key"
    monkeypatch.setattr(samplekey, "key_path", lambda: path)
    monkeypatch.delenv(samplekey.ENV, raising=False)
    return path


def test_a_key_is_made_once_readable_by_its_owner_only_and_kept(key_file):
    key = load_sample_key()
    assert len(key) == 32 and key_file.read_text().strip() == key.hex()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_sample_key() == key  # the same installation samples a file alike on every run
    assert [p.name for p in key_file.parent.iterdir()] == ["sample.key"]  # nothing left aside


def test_the_environment_variable_wins_and_is_checked(key_file, monkeypatch):
    monkeypatch.setenv(samplekey.ENV, "ab" * 16)
    assert load_sample_key() == bytes.fromhex("ab" * 16) and not key_file.exists()
    monkeypatch.setenv(samplekey.ENV, "ab" * 8)
    with pytest.raises(ValueError, match="at least 16"):
        load_sample_key()
    monkeypatch.setenv(samplekey.ENV, "not hex at all, not hex at all!!")
    with pytest.raises(ValueError, match="not hexadecimal"):
        load_sample_key()


def test_a_damaged_key_file_is_an_error_not_replaced(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text("0123")
    with pytest.raises(ValueError, match="at least 16"):
        load_sample_key()
    assert key_file.read_text() == "0123"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_no_writable_folder_samples_with_a_process_key_and_says_so(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.parent.chmod(0o500)
    try:
        with pytest.warns(SampleKeyWarning, match="DEEPSCAN_SAMPLE_KEY"):
            first = load_sample_key()
        with pytest.warns(SampleKeyWarning):
            assert load_sample_key() == first  # one key for the process's scans
    finally:
        key_file.parent.chmod(0o700)


def test_an_unwritable_key_path_samples_with_a_process_key_and_says_so(key_file, monkeypatch):
    monkeypatch.setattr(samplekey, "key_path", lambda: key_file.parent / "a_file" / "sample.key")
    key_file.parent.mkdir(parents=True)
    (key_file.parent / "a_file").write_text("")  # a file where the folder should be: even root cannot
    with pytest.warns(SampleKeyWarning, match="rerun will sample other frames"):
        first = load_sample_key()
    with pytest.warns(SampleKeyWarning):
        assert load_sample_key() == first


def test_seeds_need_the_key_and_its_id_gives_nothing_away():
    sha = "ab" * 32
    a, b = bytes(range(32)), bytes(range(1, 33))
    assert file_seed(sha, a) == file_seed(sha, a) != file_seed(sha, b)
    assert file_seed(sha, a) != file_seed("cd" * 32, a) and sha not in file_seed(sha, a)
    assert key_id(a) != key_id(b) and a.hex() not in key_id(a) and len(key_id(a)) == 16
    assert file_seed(sha, bytes(100)) != file_seed(sha, bytes(101))  # keys over BLAKE2b's 64 bytes are hashed
