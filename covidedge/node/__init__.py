"""The DICOM node: receive X-rays by C-STORE, infer, send SEG / SR / SC back (``dicom`` extra).

* :mod:`covidedge.node.node`: :class:`NodeOptions` and :class:`DicomNode` (pynetdicom Storage and
  Verification SCP, workers, delivery with retries).
* :mod:`covidedge.node.work`: the work folder, an on-disk queue that survives restarts.
* :mod:`covidedge.node.destinations`: C-STORE and folder destinations.

It sits above the runtime (it runs :func:`covidedge.runtime.run.run_inference` and picks the
default models with :func:`covidedge.runtime.defaults.default_models`, as ``covidedge infer``
does); pynetdicom is imported only when a node starts.
"""

from covidedge.node.node import DicomNode, NodeOptions, node_status
from covidedge.node.work import status_lines

__all__ = ["DicomNode", "NodeOptions", "node_status", "status_lines"]
