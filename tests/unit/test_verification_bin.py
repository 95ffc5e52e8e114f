"""insightface .bin pair files: the MXNet-era fixture reads, round trips, and code in a pickle never runs."""

import io
import os
import pickle

import pytest
from PIL import Image

from recordio_tools.verification_bin import (VerificationBinError, loads_verification_bin, read_verification_bin,
                                             write_verification_bin)


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (112, 112), (value, 255 - value, 40)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_reads_the_mxnet_fixture(mxnet_fixtures):
    images, issame = read_verification_bin(mxnet_fixtures / "lfw_style.bin")
    assert len(issame) == 20 and len(images) == 40
    assert all(isinstance(s, bool) for s in issame) and any(issame) and not all(issame)
    for data in images:
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.format == "JPEG" and img.size[0] > 0


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_round_trip_and_other_writers(tmp_path, protocol):
    images = [_jpeg(i * 20) for i in range(6)]
    issame = [True, False, True]
    path = tmp_path / "pairs.bin"
    write_verification_bin(path, images, issame)
    assert read_verification_bin(path) == (images, issame)
    # what other writers produce: Python 3 protocols 0-2 rebuild bytes through _codecs.encode
    assert loads_verification_bin(pickle.dumps((images, issame), protocol=protocol)) == (images, issame)


def test_python2_style_strings_load_as_bytes():
    # protocol-2 SHORT_BINSTRING, what Python 2's pickle wrote for str (insightface's original lfw.bin)
    data = b"\x80\x02]q\x00(U\x03ab\xffq\x01U\x01cq\x02e]q\x03\x88a\x86q\x04."
    assert loads_verification_bin(data) == ([b"ab\xff", b"c"], [True])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("payload", [_Payload, _EvalPayload])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    # the payload hidden inside an otherwise well-formed (images, issame)
    path.write_bytes(pickle.dumps(([_jpeg(1), payload(marker)], [True]), protocol=protocol))
    with pytest.raises(VerificationBinError, match=rf"{path}: not loaded: refusing to load global"):
        read_verification_bin(path)
    assert not marker.exists()


def test_codecs_stand_in_only_decodes_latin1():
    data = pickle.dumps(([b"x", b"y"], [False]), protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(VerificationBinError, match="only \\(str, 'latin1'\\)"):
        loads_verification_bin(data, "odd.bin")


@pytest.mark.parametrize("obj, message", [
    ([b"a", b"b", b"c"], "expected a pickled \\(images, issame\\) pair"),
    (([b"a", 3], [True]), "image 1 is a int"),
    (([b"a", b"b"], ["yes"]), "issame\\[0\\]"),
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
])
def test_wrong_structure_names_the_file(obj, message):
    with pytest.raises(VerificationBinError, match=f"bad.bin: .*{message}"):
        loads_verification_bin(pickle.dumps(obj, protocol=4), "bad.bin")


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-5])
    with pytest.raises(VerificationBinError, match=f"{path}: not loaded: pickle data was truncated"):
        read_verification_bin(path)
    with pytest.raises(VerificationBinError, match="verification file not found"):
        read_verification_bin(tmp_path / "absent.bin")


@pytest.mark.parametrize("opcode", [b"\x96", b"\x8e"])  # BYTEARRAY8, BINBYTES8
def test_a_length_field_cannot_order_memory(tmp_path, opcode):
    import struct
    import tracemalloc

    from recordio_tools.verification_bin import VerificationBinError, read_verification_bin

    path = tmp_path / "huge.bin"
    path.write_bytes(b"\x80\x05" + opcode + struct.pack("<Q", 1 << 34) + b"only a few bytes.")
    tracemalloc.start()
    try:
        with pytest.raises(VerificationBinError, match=r"huge\.bin: not loaded: pickle data was truncated"):
            read_verification_bin(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
