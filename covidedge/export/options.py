"""How an export error names the option it refuses: as a Python keyword or as a command-line flag.

The export API holds every rule about which options go together; the ``covidedge export`` command
only parses its flags and passes them on with its own :class:`OptionNames`, so a refusal reads
``percentile applies with method='percentile'`` from Python and ``--percentile applies with
--calib-method percentile`` from the command line: one rule, one message, two spellings.
"""

from __future__ import annotations

from typing import Mapping

#: Phrases of the Python API, by key: an option name, or a phrase a message needs. ``{}`` takes
#: a value (``method=`` with ``'entropy'`` reads ``method='entropy'``).
KEYWORD_PHRASES: Mapping[str, str] = {
    "method=": "method={!r}",
    "add": "pass",
    "int8": "int8 export",
    "choose_int8": "pass precision='int8'",
    "calibration_folder": "a dataset folder as calibration",
    "calibration_manifest": "a calibration manifest or CalibrationSet",
    "give_calibration": "pass calibration= a manifest from 'covidedge calibrate' or a COVID-QU-Ex "
                        "folder",
}


class OptionNames:
    """Names of options and the phrases around them in error messages.

    ``names("percentile")`` is the option as the caller spells it; ``names("method=", "entropy")``
    a phrase with a value. Keys without a phrase read as themselves (keyword names).
    """

    def __init__(self, phrases: Mapping[str, str] = None):
        self.phrases = dict(KEYWORD_PHRASES)
        self.phrases.update(phrases or {})

    def __call__(self, key: str, value=None) -> str:
        text = self.phrases.get(key, key)
        return text.format(value) if value is not None else text

    def __repr__(self) -> str:
        return f"OptionNames({self.phrases!r})"


#: The Python API's spelling: keyword names.
KEYWORDS = OptionNames()

__all__ = ["OptionNames", "KEYWORDS", "KEYWORD_PHRASES"]
