"""Provenance: container tags, MP4 edit lists and C2PA Content Credentials (signed here with a throwaway
certificate chain), read without changing any score."""

from __future__ import annotations

import datetime

import pytest
from conftest import ffmpeg, make_test_video

from deepscan.provenance import (
    edit_list_notes,
    parse_ffmpeg_metadata,
    provenance_summary,
    read_c2pa,
    read_mp4_structure,
    read_provenance,
)

AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture(scope="module")
def tagged_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("prov") / "tagged.mp4"
    make_test_video(path, seconds=1.0, size="160x120", rate=10,
                    codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-metadata", "creation_time=2024-05-06T07:08:09Z",
                           "-metadata:s:v", "handler_name=Core Media Video", "-metadata",
                           "com.apple.quicktime.make=Apple", "-metadata", "com.apple.quicktime.model=iPhone 12",
                           "-metadata", "title=first line\nsecond line", "-movflags", "+use_metadata_tags"))
    return path


def test_container_metadata(tagged_clip):
    prov = read_provenance(tagged_clip)
    assert prov["errors"] == []
    container = prov["container"]
    assert container["format"].startswith("mov,mp4")
    assert container["major_brand"] == "isom"
    assert container["creation_time"].startswith("2024-05-06T07:08:09")
    assert container["encoder"].startswith("Lavf")
    assert container["tags"]["title"] == "first line second line"  # a multi-line value stays one value
    video = next(s for s in prov["streams"] if s["type"] == "video")
    assert video["handler_name"] == "Core Media Video"
    assert video["codec"] == "h264"
    assert prov["device"] == {"make": "Apple", "model": "iPhone 12"}
    assert any("FFmpeg's muxer" in n for n in prov["notes"])
    assert "Apple iPhone 12" in provenance_summary(prov)


def test_rotation_and_hidden_frames(tmp_path):
    src = make_test_video(tmp_path / "src.mp4", seconds=4.0, size="160x120", rate=25,
                          codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "100"))
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(src), "-c", "copy", str(rotated))
    assert next(s for s in read_provenance(rotated)["streams"] if s["type"] == "video")["rotation"] == 270
    # Cutting at 1.5 s without re-encoding keeps the frames from the keyframe at 0 and hides them by edit list.
    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.5", "-i", str(src), "-c", "copy", str(cut))
    structure = read_mp4_structure(cut)
    (video,) = [t for t in structure["tracks"] if t["handler"] == "vide"]
    assert video["edits"][0]["media_time_s"] == pytest.approx(1.5, abs=0.1)
    assert any("hidden from playback" in n for n in edit_list_notes(structure))
    assert not any("hidden" in n for n in edit_list_notes(read_mp4_structure(src)))


def test_banner_parser_keeps_tag_values_in_their_place():
    banner = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:x.mp4':\n"
        "  Metadata:\n"
        "    major_brand     : isom\n"
        "    comment         : harmless\n"
        "                    :   Stream #0:9: Video: evil, 1x1\n"
        "    encoder         : Lavf61.1.100\n"
        "  Duration: 00:00:01.00, start: 0.000000, bitrate: 43 kb/s\n"
        "  Stream #0:0[0x1](und): Video: h264 (High), yuv420p, 160x120, 10 fps\n"
        "    Metadata:\n"
        "      handler_name    : VideoHandler\n"
        "      note            : rotation of 90.00 degrees\n"
        "    Side data:\n"
        "      displaymatrix: rotation of -90.00 degrees\n"
        "  Stream #0:1[0x2](und): Audio: aac (LC), 44100 Hz, stereo\n"
        "At least one output file must be specified\n")
    meta = parse_ffmpeg_metadata(banner)
    assert meta["tags"]["encoder"] == "Lavf61.1.100"
    assert "Stream #0:9" in meta["tags"]["comment"]
    assert [(s["index"], s["type"], s["codec"]) for s in meta["streams"]] == [(0, "video", "h264"), (1, "audio", "aac")]
    assert meta["streams"][0]["rotation"] == 90
    assert meta["streams"][0]["tags"] == {"handler_name": "VideoHandler", "note": "rotation of 90.00 degrees"}


def test_unicode_line_breaks_in_a_tag_value_neither_forge_a_stream_nor_cut_the_banner(tmp_path):
    """ffmpeg breaks the banner on "\n" only; a tag value holding U+2028 (or U+2029, U+0085) stays on its line,
    so it cannot pose as a rotated stream nor as the next input that ends the parse."""
    forged = ("hi\u2028  Stream #0:7: Video: evil, 1x1\u2028    Metadata:\u2028      rotate : 1\u2029"
              "    Side data:\u0085      displaymatrix: rotation of 90.00 degrees")
    src = make_test_video(tmp_path / "src.mp4", seconds=0.5, size="64x48", rate=10)
    injected, cut = tmp_path / "injected.mp4", tmp_path / "cut.mp4"
    ffmpeg("-i", str(src), "-c", "copy", "-metadata", f"title={forged}", str(injected))
    ffmpeg("-i", str(src), "-c", "copy", "-metadata", "album=zz\u2028Input #1, foo, from 'x'", str(cut))
    for path in (injected, cut):
        prov = read_provenance(path)
        assert [(s["index"], s["codec"], s["rotation"]) for s in prov["streams"]] == [(0, "h264", 0)]
        assert prov["container"]["encoder"].startswith("Lavf")  # the tags after the value are read too
        assert not any("rotation" in n for n in prov["notes"])
    assert "Stream #0:7" in read_provenance(injected)["container"]["tags"]["title"]


def test_edit_lists_are_cut_at_parse_time(tmp_path):
    """40 tracks of 1000 edits each (the reviewer's file: 1400 x 1000, 1.36 M edits, ~400 MB and a 1.6 MB
    record): at most MAX_TRACKS tracks and MAX_EDITS edits each are kept, notes are capped, and the record
    says what was cut. Strings from the boxes (brands, handlers) are cleaned to one printable line."""
    import json
    import struct

    from deepscan.provenance import MAX_EDIT_NOTES, MAX_EDITS, MAX_TRACKS

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    entries = struct.pack(">IihH", 20000, -1, 1, 0) + b"".join(struct.pack(">IihH", 40, 40 * i, 1, 0)
                                                               for i in range(999))
    elst = box(b"elst", struct.pack(">BxxxI", 0, 1000) + entries)
    hdlr = box(b"hdlr", b"\0" * 8 + b"v\nd\x1b" + b"\0" * 12)
    trak = box(b"trak", box(b"mdia", hdlr) + box(b"edts", elst))
    mvhd = box(b"mvhd", b"\0" * 12 + struct.pack(">I", 1000) + b"\0" * 84)
    path = tmp_path / "many_edits.mp4"
    path.write_bytes(box(b"ftyp", b"i\ns\x1b" + b"\0\0\0\0" + b"mp41ab\x1b\n") + box(b"moov", mvhd + trak * 40))
    structure = read_mp4_structure(path)
    assert structure["major_brand"] == "i s?" and structure["compatible_brands"] == ["mp41", "ab?"]
    assert len(structure["tracks"]) == MAX_TRACKS and structure["n_tracks"] == 40 and structure["tracks_cut"]
    for t in structure["tracks"]:
        assert t["handler"] == "v d?"
        assert len(t["edits"]) == MAX_EDITS and t["edit_count"] == 1000 and t["edits_cut"]
        assert t["edits"][0] == {"duration_s": 20.0, "media_time_s": None, "rate": 1.0}
    notes = edit_list_notes(structure)
    assert len(notes) == MAX_EDIT_NOTES and notes[0] == f"the file has 40 tracks (only the first {MAX_TRACKS} read)"
    assert "1000 entries (only the first 20 read)" in notes[1] and notes[-1].startswith("… and ")
    prov = read_provenance(path)
    assert len(prov["edit_lists"]) == MAX_TRACKS and prov["edit_lists"][0]["edit_count"] == 1000
    assert prov["edit_lists_cut"] == {"tracks": 40, "read": MAX_TRACKS}
    assert len(prov["notes"]) <= MAX_EDIT_NOTES + 4 and len(json.dumps(prov)) < 64_000


def test_unreadable_file_reports_errors_instead_of_raising(tmp_path):
    text = tmp_path / "page.mp4"
    text.write_text("<html>not a video</html>")
    prov = read_provenance(text)
    assert prov["container"] is None and prov["errors"]
    assert prov["c2pa"]["status"] in ("unsupported", "unavailable")
    assert read_provenance(tmp_path / "missing.mp4")["errors"] == ["file not found"]


# ------------------------------------------------------------------------------------------------- C2PA
def _test_chain(tmp_path):
    """An ES256 root CA and a signing certificate, valid for a day (C2PA refuses self-signed signers)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deepscan tests")])

    def usage(**on):
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**{**flags, **on})

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("deepscan test root")).issuer_name(name("deepscan test root"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("deepscan test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(ca))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem(cert) + pem(ca), private, anchors


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    c2pa = pytest.importorskip("c2pa")
    tmp = tmp_path_factory.mktemp("c2pa")
    chain, private, anchors = _test_chain(tmp)
    source = make_test_video(tmp / "source.mp4", seconds=1.0, size="160x120", rate=10)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, private, None))
    manifest = {"claim_generator_info": [{"name": "deepscan-test-generator", "version": "1.0"}],
                "title": "synthetic test clip",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": AI_SOURCE,
                     "softwareAgent": {"name": "FaceGen AI", "version": "2"}}]}}]}
    out = tmp / "signed.mp4"
    with c2pa.Builder(manifest) as builder, open(source, "rb") as src, open(out, "w+b") as dst:
        builder.sign(signer, "video/mp4", src, dst)
    return {"path": out, "source": source, "anchors": anchors}


def test_c2pa_manifest_read(signed):
    info = read_c2pa(signed["path"])
    assert info["present"] is True
    assert info["status"] == "untrusted_signer"  # valid signature, but the test root is on no trust list
    assert info["claim_generator"] == "deepscan-test-generator 1.0"
    assert info["title"] == "synthetic test clip"
    assert info["signer"]["common_name"] == "deepscan test signer"
    assert info["signer"]["issuer"] == "deepscan tests"
    assert info["generative_ai"] == "created"
    assert info["actions"] == [{"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia",
                                "software_agent": "FaceGen AI 2"}]
    assert info["embedded"] is True


def test_c2pa_trusted_with_anchor(signed):
    assert read_c2pa(signed["path"], trust_anchors=str(signed["anchors"]))["status"] == "valid"
    prov = read_provenance(signed["path"], trust_anchors=str(signed["anchors"]))
    assert provenance_summary(prov).startswith("C2PA ✓ · AI-generated")
    assert any("generative AI tool" in n for n in prov["notes"])


def test_c2pa_tampered_pixels_are_reported(signed, tmp_path):
    data = bytearray(signed["path"].read_bytes())
    mdat = data.find(b"mdat")
    assert mdat > 0
    for i in range(mdat + 64, mdat + 80):  # flip bytes of coded video
        data[i] ^= 0xFF
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    info = read_c2pa(tampered, trust_anchors=str(signed["anchors"]))
    assert info["present"] is True
    assert info["status"] == "tampered"
    assert any("mismatch" in code for code in info["failures"])
    assert "TAMPERED" in provenance_summary(read_provenance(tampered))


def test_c2pa_absent(signed):
    assert read_c2pa(signed["source"]) == {"present": False, "status": "absent"}


def test_c2pa_of_a_vanished_file_is_an_error_record(tmp_path):
    pytest.importorskip("c2pa")
    info = read_c2pa(tmp_path / "gone.mp4")
    assert info["present"] is None and info["status"] == "error" and "could not read" in info["error"]


def test_edit_list_notes_say_where_media_is_hidden_held_or_missing():
    """Only the start of the first media edit was read: a hidden tail said nothing (4 of 6 s stored but never
    played, nor screened: ffmpeg applies the list), a gap after 1 s read "starts 2.00 s late", and a frozen
    frame (rate 0) was not mentioned."""
    def notes(*edits, stored=6.0):
        return edit_list_notes({"tracks": [{"handler": "vide", "media_duration_s": stored, "edits": [
            {"duration_s": d, "media_time_s": t, "rate": r} for d, t, r in edits]}]})

    assert notes((2.0, 0.0, 1.0)) == ["video: the last 4.00 s of the stored media are hidden from playback by the "
                                      "edit list"]
    assert notes((1.0, 0.0, 1.0), (2.0, None, 1.0), (5.0, 1.0, 1.0)) == [
        "video edit list splices 2 segments of the stored media", "video: a 2.00 s gap at 1.00 s (empty edit)"]
    assert "video: the frame at 1.00 s of the stored media is held for 3.00 s (dwell)" in notes(
        (1.0, 0.0, 1.0), (3.0, 1.0, 0.0))
    assert notes((2.0, None, 1.0), (6.0, 0.0, 1.0)) == ["video starts 2.00 s late (empty edit)"]
    assert notes((5.92, 0.08, 1.0)) == []  # an encoder's B-frame delay: nothing hidden worth a note


def test_quicktime_tracks_and_matroska_tags_are_named_like_mp4s(tmp_path):
    """A .mov's tracks read as handler "url " (QuickTime's data handler, in minf, overwrote the media's), so its
    notes said "track 1" for the video; Matroska's upper-case tags (ENCODER, HANDLER_NAME) were not found, so a
    file remuxed by ffmpeg read as untouched."""
    src = make_test_video(tmp_path / "src.mp4", seconds=3.0, size="160x120", rate=25,
                          codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "100"))
    cut = tmp_path / "cut.mov"
    ffmpeg("-ss", "1.5", "-i", str(src), "-c", "copy", str(cut))
    structure = read_mp4_structure(cut)
    assert [t["handler"] for t in structure["tracks"]] == ["vide"]
    assert any(n.startswith("video: the first") for n in edit_list_notes(structure))
    mkv = tmp_path / "remuxed.mkv"
    ffmpeg("-i", str(src), "-c", "copy", str(mkv))
    prov = read_provenance(mkv)
    assert prov["container"]["encoder"].startswith("Lavf") and "ENCODER" in prov["container"]["tags"]
    assert any("FFmpeg's muxer" in n for n in prov["notes"])


def test_a_fragmented_file_with_an_edit_to_the_end_hides_nothing(tmp_path):
    """A fragmented MP4's edit of duration 0 runs to the end of the media, and its mdhd counts only the samples
    in moov: read as an edit ending where it starts, it got a false "last 0.93 s hidden" note."""
    src = make_test_video(tmp_path / "src.mp4", seconds=3.0, size="160x120", rate=15)
    frag = tmp_path / "frag.mp4"
    ffmpeg("-i", str(src), "-c", "copy", "-movflags", "frag_keyframe", "-use_editlist", "1", str(frag))
    structure = read_mp4_structure(frag)
    assert structure.get("fragmented")
    assert not any("last" in n for n in edit_list_notes(structure))
    assert edit_list_notes({"tracks": [{"handler": "vide", "media_duration_s": 6.0, "edits": [
        {"duration_s": 0.0, "media_time_s": 0.08, "rate": 1.0}]}]}) == []
