"""export_model refuses what it cannot honour, before any work, with the one-line errors the
command line prints (same rule, the command's flags instead of keywords)."""

from __future__ import annotations

import pytest

from covidedge.cli.main import main
from covidedge.errors import EXIT_USAGE, BadInputError
from covidedge.export import check_export_options, export_model


@pytest.fixture
def files(tmp_path):
    """A checkpoint that is never read (the refusals come first), a manifest file and a folder."""
    ckpt = tmp_path / "never-read.pt"
    ckpt.write_bytes(b"not a checkpoint")
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    folder = tmp_path / "data"
    folder.mkdir()
    return ckpt, manifest, folder


def _refusals(manifest, folder):
    """(precision, API options, CLI arguments, API message, CLI message) per rule."""
    m = str(manifest)
    return [
        ("fp16", {"method": "minmax"}, ["--calib-method", "minmax"],
         "method applies to int8 export only (drop it or pass precision='int8')",
         "--calib-method applies to --precision int8 only (drop it or add --precision int8)"),
        ("fp32", {"calibration": m, "percentile": 99.0}, ["--calibration", m, "--percentile", "99"],
         "calibration, percentile apply to int8 export only (drop them or pass precision='int8')",
         "--calibration, --percentile apply to --precision int8 only (drop them or add --precision int8)"),
        ("int8", {}, [], "int8 export needs calibration images (pass calibration= a manifest",
         "int8 export needs calibration images (pass --calib-data DIR or --calibration MANIFEST"),
        ("int8", {"calibration": m, "percentile": 99.0}, ["--calibration", m, "--percentile", "99"],
         "percentile applies with method='percentile' (drop percentile or pass method='percentile')",
         "--percentile applies with --calib-method percentile (drop --percentile or add "
         "--calib-method percentile)"),
        ("int8", {"calibration": m, "method": "minmax", "percentile": 99.0},
         ["--calibration", m, "--calib-method", "minmax", "--percentile", "99"],
         "percentile applies with method='percentile'",
         "--percentile applies with --calib-method percentile"),
        ("int8", {"calibration": m, "calib_count": 3}, ["--calibration", m, "--calib-count", "3"],
         "calib_count applies with a dataset folder as calibration, not a calibration manifest",
         "--calib-count applies with --calib-data, not --calibration"),
    ]


def test_api_and_cli_refuse_with_one_rule_in_their_own_words(files, tmp_path, capsys):
    ckpt, manifest, folder = files
    out = tmp_path / "x.onnx"
    for precision, options, args, api_message, cli_message in _refusals(manifest, folder):
        with pytest.raises(BadInputError) as exc:
            export_model(ckpt, out, precision=precision, **options)
        assert api_message in str(exc.value) and len(str(exc.value).splitlines()) == 1
        with pytest.raises(SystemExit) as code:
            main(["export", str(ckpt), "--out", str(out), "--precision", precision, *args])
        err = capsys.readouterr().err
        # an option that applies to int8 only is a usage error, as in build-engine (issue 21)
        want = EXIT_USAGE if "int8 only" in cli_message else BadInputError.exit_code
        assert code.value.code == want, err
        assert err.startswith("error: ") and cli_message in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_int8_only_keywords_and_histogram_options_are_checked(files, tmp_path):
    ckpt, manifest, folder = files
    with pytest.raises(BadInputError, match="histogram_bins, qdq_placement apply to int8 export only"):
        export_model(ckpt, tmp_path / "x.onnx", precision="fp16", histogram_bins=512,
                     qdq_placement="tensorrt")
    with pytest.raises(BadInputError, match="histogram_bins applies with method='entropy' or "
                                            "method='percentile'"):
        export_model(ckpt, tmp_path / "x.onnx", precision="int8", calibration=manifest,
                     method="minmax", histogram_bins=512)
    with pytest.raises(BadInputError, match="calibration method 'kl' is unknown"):
        export_model(ckpt, tmp_path / "x.onnx", precision="int8", calibration=manifest, method="kl")
    # a count goes with a folder: the rules pass, and the work would start
    check_export_options("int8", {"calibration": folder, "calib_count": 3})
    check_export_options("int8", {"calibration": manifest, "method": "percentile",
                                  "percentile": 99.9, "histogram_bins": 512})


def test_cli_refuses_both_calibration_sources(files, tmp_path, capsys):
    ckpt, manifest, folder = files
    with pytest.raises(SystemExit) as code:
        main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--precision", "int8",
              "--calibration", str(manifest), "--calib-data", str(folder)])
    assert code.value.code == 3
    assert "pass either --calib-data or --calibration, not both" in capsys.readouterr().err


def test_one_misuse_has_one_exit_code_in_export_and_build_engine(files, tmp_path, capsys):
    ckpt, _, _ = files
    codes = []
    for argv in (["export", str(ckpt), "--out", str(tmp_path / "x.onnx")],
                 ["build-engine", str(ckpt), "--out", str(tmp_path / "x.engine")]):
        with pytest.raises(SystemExit) as code:
            main([*argv, "--precision", "fp16", "--calib-count", "5"])
        codes.append(code.value.code)
        assert "int8 only" in capsys.readouterr().err
    assert codes == [EXIT_USAGE, EXIT_USAGE]
