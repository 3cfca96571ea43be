import json

from click.testing import CliRunner

from covidedge.cli.info import command


def test_info_json_lists_backends_and_default():
    res = CliRunner().invoke(command, ["--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert set(facts["backends"]) >= {"tensorrt", "onnxruntime", "torch"}
    assert facts["backends"]["onnxruntime"]["available"] is True
    expected = "tensorrt" if facts["backends"]["tensorrt"]["available"] else "onnxruntime"
    assert facts["default_backend"] == expected
    assert facts["machine"]["cpu_cores"] >= 1


def test_info_table_names_each_backend():
    res = CliRunner().invoke(command, [])
    assert res.exit_code == 0
    for name in ("tensorrt", "onnxruntime", "torch", "default"):
        assert any(line.startswith(name) for line in res.output.splitlines())
