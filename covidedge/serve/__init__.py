"""Serving at scale on NVIDIA Triton Inference Server.

* :mod:`covidedge.serve.repository`: a Triton model repository from covidedge engines or ONNX
  models (``covidedge triton-repo``), with an ensemble that takes encoded image bytes.
* :mod:`covidedge.serve.config`: ``config.pbtxt`` files checked against Triton's schema.
* :mod:`covidedge.serve.models`: the python-backend steps (preprocess, networks, postprocess).
* :mod:`covidedge.serve.server`: launch the ``tritonserver`` of the ``serve`` extra
  (``covidedge serve``), or the ``docker run`` command of NVIDIA's container for GPUs.
* :mod:`covidedge.serve.client`: send images to a running server (``covidedge infer --server``).

Nothing here imports tritonclient until it is needed; without the ``serve`` extra the verbs
stop with exit code 6 and the install command.
"""
