import onnx
import pytest

from covidedge.formats.onnxfile import WireError, read_metadata_props
from tests.graphs import strip_metadata, tiny_classifier_onnx


def test_matches_onnx_for_a_real_model(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_classifier_onnx(path)
    m = onnx.load(str(path))
    m.metadata_props.add(key="unicode", value="Lunge – ü ✓")
    onnx.save(m, str(path))
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_metadata_props(path) == expected
    assert "covidedge.spec" in expected and expected["unicode"] == "Lunge – ü ✓"


def test_model_without_metadata_gives_empty_dict(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_classifier_onnx(path)
    strip_metadata(path)
    assert read_metadata_props(path) == {}


@pytest.mark.parametrize("data", [b"", b"hello, this is text\n", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_garbage_raises_wire_error(tmp_path, data):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(WireError):
        read_metadata_props(path)


def test_truncated_model_raises(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_classifier_onnx(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WireError):
        read_metadata_props(path)
