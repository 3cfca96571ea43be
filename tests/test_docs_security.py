"""The documented side of issue 22 (item 13 and the security page): file names are echoed as
they are, and the docs say so next to the promise about patient attributes."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_says_file_names_are_echoed_and_links_the_security_page():
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "prints and writes file names as they are" in text
    assert "docs/security.md" in text


def test_security_page_covers_exposure_data_at_rest_and_logs():
    text = " ".join((ROOT / "docs" / "security.md").read_text(encoding="utf-8").split())
    for needle in ("no authentication", "authenticating proxy", "127.0.0.1", "/dev/shm", "0600",
                   "memfd", "--show-patient-ids", "File names are printed and written as they are",
                   "Client-side decoding"):
        assert needle in text, needle
