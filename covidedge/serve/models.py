"""The Triton python-backend models of a covidedge repository, run inside Triton's python stub.

Each ``model.py`` in a repository written by :func:`covidedge.serve.repository.write_repository`
is one line that imports a class from here as ``TritonPythonModel``, so the server runs the
same code as ``covidedge infer``:

* :class:`PreprocessModel`: encoded PNG / JPEG / BMP / TIFF / DICOM bytes -> covidedge's one
  decoding and preprocessing, per network input size, plus the image's (height, width) in px.
* :class:`NetworkModel`: a classifier or segmenter on covidedge's own runtime (ONNX Runtime or
  OpenVINO, with the engine manifest checks), one inference call per dynamic batch.
* :class:`PostprocessModel`: probabilities -> class label, lung and infection masks at the
  image's own size, lung fraction and infected fraction of the lungs (severity).

``triton_python_backend_utils`` exists only inside the stub, so it is imported in
``initialize``. Errors go back per request as one line; a bad image is ``INVALID_ARG``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

# Tensor names shared by the repository writer, these models and the client.
IMAGE = "IMAGE"
IMAGE_SIZE = "IMAGE_SIZE"
NETWORK_IMAGE = {"classifier": "CLASSIFIER_IMAGE", "segmenter": "SEGMENTER_IMAGE"}
NETWORK_PROBABILITIES = {"classifier": "CLASSIFIER_PROBABILITIES", "segmenter": "SEGMENTER_PROBABILITIES"}
LABEL = "LABEL"
PROBABILITIES = "PROBABILITIES"
LUNG_MASK = "LUNG_MASK"
INFECTION_MASK = "INFECTION_MASK"
LUNG_FRACTION = "LUNG_FRACTION"
INFECTED_FRACTION = "INFECTED_FRACTION"


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # provided by Triton's python stub

    return pb_utils


def error_text(exc: BaseException) -> str:
    """One line for the client: the error without the server-side temporary path (the client
    puts its own file name in front), keeping covidedge's hint."""
    from covidedge.errors import one_line

    text = one_line(exc)
    path = getattr(exc, "path", None)
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    return text


class _StepModel:
    """What every step shares: its config, parameters, version folder and error responses."""

    def initialize(self, args: Dict[str, Any]) -> None:
        self.pb = _pb_utils()
        self.config = json.loads(args["model_config"])
        self.params = {k: v.get("string_value", "") for k, v in (self.config.get("parameters") or {}).items()}
        self.folder = Path(args["model_repository"]) / str(args["model_version"])
        self.name = args.get("model_name", self.config.get("name", ""))

    def _error(self, exc: BaseException):
        from covidedge.errors import BadInputError

        pb = self.pb
        code = None
        if isinstance(exc, BadInputError):
            code = getattr(pb.TritonError, "INVALID_ARG", None)
        err = pb.TritonError(error_text(exc)) if code is None else pb.TritonError(error_text(exc), code)
        return pb.InferenceResponse(output_tensors=[], error=err)

    def _input(self, request, name: str) -> np.ndarray:
        t = self.pb.get_input_tensor_by_name(request, name)
        if t is None:
            from covidedge.errors import BadInputError

            raise BadInputError(f"request has no input tensor '{name}'")
        return t.as_numpy()

    def execute(self, requests) -> List[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self.pb.InferenceResponse(output_tensors=self._one(request)))
            except Exception as exc:  # one bad request must not fail the others of its batch
                responses.append(self._error(exc))
        return responses

    def _one(self, request) -> List[Any]:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


def _size(text: str):
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


class PreprocessModel(_StepModel):
    """IMAGE (bytes, one per batch row) -> one float32 (1, H, W) input per network + IMAGE_SIZE."""

    def initialize(self, args):
        super().initialize(args)
        self.sizes = {task: _size(self.params[f"{task}_size"])
                      for task in NETWORK_IMAGE if f"{task}_size" in self.params}
        self.max_pixels = int(self.params.get("max_pixels", 0)) or None

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded bytes -> float32 H x W in [0, 1] through covidedge's file decoder, so every
        check (truncation, pixel limit, DICOM LUTs) is the one ``covidedge infer`` applies.

        The bytes (a patient's DICOM) never get a name on disk: they go to an anonymous
        in-memory file (``memfd``) that vanishes with this process, even if it is killed
        mid-request. A DICOM without preamble is recognised by its first element, as the
        local reader recognises it by its ``.dcm`` name."""
        from covidedge.data.imageio import DEFAULT_MAX_PIXELS, HEAD_BYTES, looks_like_bare_dicom, read_gray
        from covidedge.errors import BadInputError

        if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
            raise BadInputError("is an empty image (0 bytes)",
                                hint="send the encoded file (PNG, JPEG, BMP, TIFF or DICOM) as bytes")
        data = bytes(data)
        dicom = looks_like_bare_dicom(data[:HEAD_BYTES], len(data))
        limit = self.max_pixels or DEFAULT_MAX_PIXELS
        fd = _anonymous_file()
        if fd is None:  # no memfd (not Linux): a private temporary file, removed at once
            with tempfile.TemporaryDirectory(prefix="covidedge-preprocess-") as tmp:
                name = os.path.join(tmp, "image")
                with open(name, "wb") as fh:
                    fh.write(data)
                return read_gray(name, max_pixels=limit, dicom=dicom)
        try:
            _write_all(fd, data)
            return read_gray(f"/proc/self/fd/{fd}", max_pixels=limit, dicom=dicom)
        finally:
            os.close(fd)

    def _one(self, request):
        from covidedge.data.preprocess import resize_gray
        from covidedge.errors import BadInputError

        images = self._input(request, IMAGE).reshape(-1)
        outs = {task: [] for task in self.sizes}
        hw = []
        for data in images:
            gray = self.decode(data)
            for task, size in self.sizes.items():
                x = resize_gray(gray, size)
                if not np.isfinite(x).all():
                    raise BadInputError("contains NaN or infinite pixel values after preprocessing",
                                        hint="check the file's pixel data")
                outs[task].append(x[None])
            hw.append(gray.shape)
        tensors = [self.pb.Tensor(NETWORK_IMAGE[task], np.ascontiguousarray(np.stack(v), dtype=np.float32))
                   for task, v in outs.items()]
        tensors.append(self.pb.Tensor(IMAGE_SIZE, np.asarray(hw, dtype=np.int32).reshape(-1, 2)))
        return tensors



def _anonymous_file():
    """A file descriptor of an anonymous in-memory file, or None where memfd is missing."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        return create("covidedge-image", getattr(os, "MFD_CLOEXEC", 1))
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class NetworkModel(_StepModel):
    """A covidedge classifier or segmenter on covidedge's runtime. The requests of one dynamic
    batch run as one batch (split to the model's batch range by the runtime); if that fails,
    each request runs alone so that only the broken one gets an error."""

    def initialize(self, args):
        super().initialize(args)
        from covidedge.runtime.pipeline import Classifier, Segmenter

        task = self.params["task"]
        path = self.folder / self.params["model_file"]
        opts: Dict[str, Any] = {}
        if self.params.get("threads"):
            key = "threads" if self.params.get("runtime") == "openvino" else "intra_op_threads"
            opts[key] = int(self.params["threads"])
        cls = Classifier if task == "classifier" else Segmenter
        self.model = cls(str(path), backend=self.params.get("runtime", "auto"), **opts)
        self.model.activate()
        spec = self.model.spec
        self.input_name, self.output_name = spec.input_name, spec.output_names[1]

    def execute(self, requests):
        xs, responses = [], [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                xs.append((i, np.asarray(self._input(r, self.input_name), dtype=np.float32)))
            except Exception as exc:
                responses[i] = self._error(exc)
        try:
            if xs:
                probs = self.model.run(np.concatenate([x for _, x in xs], axis=0))
                start = 0
                for i, x in xs:
                    p = probs[start:start + x.shape[0]]
                    start += x.shape[0]
                    responses[i] = self.pb.InferenceResponse(
                        output_tensors=[self.pb.Tensor(self.output_name, np.ascontiguousarray(p))])
        except Exception:
            for i, x in xs:
                try:
                    p = self.model.run(x)
                    responses[i] = self.pb.InferenceResponse(
                        output_tensors=[self.pb.Tensor(self.output_name, np.ascontiguousarray(p))])
                except Exception as exc:
                    responses[i] = self._error(exc)
        return responses

    def finalize(self):
        self.model.deactivate()


def check_image_sizes(sizes: np.ndarray, max_pixels: Optional[int] = None) -> None:
    """BadInputError (answered as 400 / INVALID_ARG) unless every ``(height, width)`` row is an
    image size decoding could have given: 1 px or more per side and at most ``max_pixels``
    (covidedge's decoding limit). The postprocess step can be called directly, and masks are made
    at this size: a request naming 46000 x 46000 must not allocate gigabytes."""
    from covidedge.data.imageio import DEFAULT_MAX_PIXELS
    from covidedge.errors import BadInputError

    limit = int(max_pixels or DEFAULT_MAX_PIXELS)
    for h, w in np.asarray(sizes).reshape(-1, 2).tolist():
        if h < 1 or w < 1 or h * w > limit:
            raise BadInputError(f"{IMAGE_SIZE} {h}x{w} is not an image size: expected 1 px or more per "
                                f"side and at most {limit} pixels", hint="send the image to the "
                                "'covidedge' ensemble, which measures it")


class PostprocessModel(_StepModel):
    """Probabilities + IMAGE_SIZE -> LABEL, LUNG_MASK, INFECTION_MASK (bool, the image's own size),
    LUNG_FRACTION and INFECTED_FRACTION, by the rules of :class:`covidedge.runtime.pipeline.Pipeline`."""

    def initialize(self, args):
        super().initialize(args)
        self.labels = json.loads(self.params.get("labels", "[]"))
        self.channels = json.loads(self.params.get("channels", "[]"))
        from covidedge.spec import MASK_THRESHOLD

        self.threshold = float(self.params.get("threshold", MASK_THRESHOLD))

    def _one(self, request):
        from covidedge.errors import BadInputError, RuntimeFailure
        from covidedge.metrics import infected_fraction, lung_fraction
        from covidedge.runtime.postprocess import infection_allowed, segmentation_masks

        sizes = self._input(request, IMAGE_SIZE).reshape(-1, 2)
        n = sizes.shape[0]
        check_image_sizes(sizes, int(self.params.get("max_pixels", 0) or 0) or None)
        out = []
        covid_possible = [True] * n
        if self.labels:
            p = np.asarray(self._input(request, NETWORK_PROBABILITIES["classifier"]), dtype=np.float64)
            p = p.reshape(n, -1)
            if p.shape[1] != len(self.labels):
                raise RuntimeFailure(f"classifier gave {p.shape[1]} probabilities for {len(self.labels)} labels")
            if not np.isfinite(p).all():
                raise RuntimeFailure("classifier output contains NaN or infinite values",
                                     hint="check the model and the image")
            names = [self.labels[int(np.argmax(row))].encode() for row in p]
            covid_possible = [infection_allowed(self.labels, row) for row in p]
            out.append(self.pb.Tensor(LABEL, np.array(names, dtype=object).reshape(n, 1)))
        if self.channels:
            if n > 1 and len({tuple(s) for s in sizes.tolist()}) > 1:
                raise BadInputError(f"{n} images of different sizes in one request; masks differ in "
                                    "size", hint="send one image per request")
            p = np.asarray(self._input(request, NETWORK_PROBABILITIES["segmenter"]), dtype=np.float32)
            if not np.isfinite(p).all():
                raise RuntimeFailure("segmenter output contains NaN or infinite values",
                                     hint="check the model and the image")
            il, ii = self.channels.index("lungs"), self.channels.index("infection")
            lungs, infection, lf, inf = [], [], [], []
            for k in range(n):
                h, w = (int(v) for v in sizes[k])
                lm, im = segmentation_masks(p[k, il], p[k, ii], self.threshold, (h, w),
                                            infection=covid_possible[k])
                lungs.append(lm)
                infection.append(im)
                lf.append(lung_fraction(lm))
                inf.append(infected_fraction(im, lm))
            out += [self.pb.Tensor(LUNG_MASK, np.stack(lungs)),
                    self.pb.Tensor(INFECTION_MASK, np.stack(infection)),
                    self.pb.Tensor(LUNG_FRACTION, np.asarray(lf, dtype=np.float64).reshape(n, 1)),
                    self.pb.Tensor(INFECTED_FRACTION, np.asarray(inf, dtype=np.float64).reshape(n, 1))]
        return out


__all__ = ["PreprocessModel", "NetworkModel", "PostprocessModel", "error_text", "check_image_sizes"]
