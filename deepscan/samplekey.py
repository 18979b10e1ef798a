"""The secret that, with a file's sha256, places that file's samples (``video.sample_shifts``).

Drawn from the file alone, the places were a public function of its bytes: its author could compute them and
try variants of the file (bytes appended in a ``free`` box, a changed tag) until few samples fell on fake frames.
A reviewer's half-fake clip went from fake 0.897 to real 0.418 after 68,447 tries (3.6 s in Python). Keyed, the
places cannot be computed without the key. It is 32 random bytes made on first use in the user's data folder
(readable by its owner only), or ``$DEEPSCAN_SAMPLE_KEY`` (hex): one installation samples a file alike on every
run, and a team, or an examiner repeating a scan, shares the key. Results record only its id.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import warnings
from pathlib import Path

ENV = "DEEPSCAN_SAMPLE_KEY"
KEY_BYTES = 32
MIN_KEY_BYTES = 16


class SampleKeyWarning(UserWarning):
    """No key could be kept: this process samples with a key of its own, so a rerun samples elsewhere."""


_process_key: bytes | None = None  # the fallback when no key file can be written


def key_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("deepscan")) / "sample.key"


def _parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{where} is not hexadecimal") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{where} holds {len(key)} bytes; a sample key needs at least {MIN_KEY_BYTES} "
                         f"({2 * MIN_KEY_BYTES} hex digits)")
    return key


def load_sample_key() -> bytes:
    """``$DEEPSCAN_SAMPLE_KEY``, else the key file (made on first use). A key file that exists but cannot be
    read as a key is an error, never replaced: that would move every later sample without a word."""
    text = os.environ.get(ENV)
    if text:
        return _parse(text, f"${ENV}")
    path = key_path()
    try:
        return _parse(path.read_text(encoding="ascii"), str(path))
    except (FileNotFoundError, NotADirectoryError):  # none yet (one that cannot be read is an error)
        pass
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not hexadecimal") from None
    # Written aside, then linked into place: a process reading the key never sees a half-written file, and
    # of two made at once the first linked is every process's key.
    key = secrets.token_bytes(KEY_BYTES)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(key.hex() + "\n")
            os.link(aside, path)
        except FileExistsError:
            if not path.is_file():
                raise
            return _parse(path.read_text(encoding="ascii"), str(path))  # made first elsewhere: the key
    except OSError as exc:
        return _unkept_key(path, exc)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)
    return key


def _unkept_key(path: Path, exc: OSError) -> bytes:
    global _process_key
    if _process_key is None:
        _process_key = secrets.token_bytes(KEY_BYTES)
    warnings.warn(f"no sample key could be kept ({path}: {exc.strerror or exc}): this process samples with a key "
                  f"of its own, so a rerun will sample other frames; set ${ENV} to keep one",
                  SampleKeyWarning, stacklevel=3)
    return _process_key


def key_id(key: bytes) -> str:
    """A name for the key that gives nothing of it away (results record this, never the key)."""
    return hashlib.sha256(b"deepscan sample key id|" + key).hexdigest()[:16]


def file_seed(sha256: str, key: bytes) -> str:
    """The seed of a file's sample places: its sha256 under the key (keyed BLAKE2b, a MAC)."""
    if len(key) > 64:  # BLAKE2b's longest key
        key = hashlib.sha512(key).digest()
    return hashlib.blake2b(sha256.encode(), key=key, digest_size=32).hexdigest()
