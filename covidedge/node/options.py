"""The DICOM node's options: what it listens on, whom it accepts, what it runs and where
results go (:class:`NodeOptions`), the storage classes and transfer syntaxes it accepts, and the
DIMSE statuses it answers with."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

from covidedge.dicom import SeriesFilter
from covidedge.errors import BadInputError, UsageError, one_line
from covidedge.node.destinations import FolderDestination, StoreDestination, check_ae_title

#: Storage SOP classes accepted by ``accept``: "xray" (CR, DX for presentation and for
#: processing), "xray+sc" (and Secondary Capture), "any" (every storage class; instances that are
#: not radiographs are acknowledged and reported, not run).
XRAY_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPT_CHOICES = ("xray", "xray+sc", "any")
#: C-STORE status "Refused: Out of Resources".
OUT_OF_RESOURCES = 0xA700
#: DIMSE status "Refused: Not Authorized".
NOT_AUTHORIZED = 0x0124
DEFAULT_AE_TITLE = "COVIDEDGE"
DEFAULT_PORT = 11112


def transfer_syntaxes() -> List[str]:
    """The transfer syntaxes accepted: uncompressed ones, and the compressed ones pydicom can
    decode on this machine (JPEG, JPEG-LS, JPEG 2000, RLE, ... as its plug-ins allow)."""
    from pydicom import uid
    from pydicom.pixels.decoders.base import get_decoder

    out = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
           uid.ExplicitVRBigEndian]
    for syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
                   uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000,
                   uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K, uid.RLELossless):
        try:
            if get_decoder(syntax).is_available:
                out.append(syntax)
        except (NotImplementedError, ValueError):
            pass
    return [str(s) for s in out]


def _split(values) -> Tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    return tuple(v.strip() for item in values for v in str(item).split(",") if v.strip())


def _peer_ip(host: str):
    """The peer's address (an IPv4-mapped IPv6 address as IPv4), or None when ``host`` is none."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


def _is_loopback(host: str) -> bool:
    ip = _peer_ip(host)
    return ip is not None and ip.is_loopback


@dataclass
class NodeOptions:
    """What the node listens on, whom it accepts, what it runs and where results go.

    ``classifier`` / ``segmenter``: model paths; with neither, the default models that
    ``covidedge infer`` runs (:func:`covidedge.runtime.defaults.default_models`). ``forward``:
    ``AE@HOST:PORT`` destinations; ``dicom_out``: a folder destination; at least one of them.
    ``allow_ae``: calling AE titles accepted; ``allow_hosts``: peer addresses (or networks,
    ``10.0.0.0/24``) accepted; with neither, only loopback peers. ``tls_cert`` / ``tls_key``
    (and ``tls_ca`` to require client certificates) make it a DICOM TLS node. ``retry_initial_s``
    doubles per failed delivery up to ``retry_max_s``.
    """

    work: Union[str, os.PathLike]
    forward: Tuple[str, ...] = ()
    dicom_out: Optional[Union[str, os.PathLike]] = None
    classifier: Optional[Union[str, os.PathLike]] = None
    segmenter: Optional[Union[str, os.PathLike]] = None
    threshold: Optional[float] = None
    backend: str = "auto"
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_ae: Tuple[str, ...] = ()
    allow_hosts: Tuple[str, ...] = ()
    tls_cert: Optional[Union[str, os.PathLike]] = None
    tls_key: Optional[Union[str, os.PathLike]] = None
    tls_ca: Optional[Union[str, os.PathLike]] = None
    accept: str = "xray"
    series_filter: SeriesFilter = field(default_factory=SeriesFilter)
    overlay: bool = True
    workers: int = 1
    batch_size: int = 8
    max_queue: int = 1000
    min_free_mb: float = 1024.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    stop_timeout_s: float = 10.0

    def __post_init__(self):
        from covidedge.spec import MAX_BATCH, RUNNER_BACKEND_CHOICES, check_choice

        self.work = Path(os.fspath(self.work))
        self.forward = _split(self.forward)
        self.allow_ae = tuple(check_ae_title(a, "--allow") for a in _split(self.allow_ae))
        self.allow_hosts = _split(self.allow_hosts)
        self.ae_title = check_ae_title(self.ae_title, "--ae-title")
        check_choice("accept", self.accept, ACCEPT_CHOICES)
        check_choice("backend", self.backend, RUNNER_BACKEND_CHOICES)
        self.destinations = [StoreDestination.parse(f) for f in self.forward]
        if self.dicom_out is not None:
            self.destinations.append(FolderDestination(Path(os.fspath(self.dicom_out))))
        if not self.destinations:
            raise UsageError("the node needs somewhere to send results",
                             hint="give --forward AE@HOST:PORT (the PACS) or --dicom-out FOLDER")
        if len({d.key for d in self.destinations}) != len(self.destinations):
            raise UsageError("the same destination is given twice", hint="give each --forward once")
        for name, lo, hi in (("workers", 1, 64), ("batch_size", 1, MAX_BATCH), ("max_queue", 1, 10**7),
                             ("port", 0, 65535)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise BadInputError(f"{name}={value!r}, expected an integer in {lo}..{hi}")
        for name in ("min_free_mb", "retry_initial_s", "retry_max_s", "stop_timeout_s"):
            if not float(getattr(self, name)) >= 0:
                raise BadInputError(f"{name}={getattr(self, name)!r}, expected a number >= 0")
        self.allowed_networks = []
        for h in self.allow_hosts:
            try:
                self.allowed_networks.append(ipaddress.ip_network(h, strict=False))
            except ValueError:
                raise BadInputError(f"--allow-host {h!r} is not an IP address or network",
                                    hint="give addresses such as 10.0.0.5 or 10.0.0.0/24") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together", hint="give both, or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise UsageError("--tls-ca checks clients of a TLS node", hint="give --tls-cert and --tls-key too")

    def host_allowed(self, host: str) -> bool:
        """Whether a peer at ``host`` may open an association."""
        if not self.allowed_networks:
            return bool(self.allow_ae) or _is_loopback(host)
        ip = _peer_ip(host)
        return ip is not None and any(ip in net for net in self.allowed_networks)

    def ssl_context(self):
        """The server's TLS context (None without ``tls_cert``); BadInputError naming a bad file."""
        if self.tls_cert is None:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise BadInputError(f"TLS certificate or key cannot be used: {one_line(exc)}", path=self.tls_cert,
                                hint="give a PEM certificate and its private key") from exc
        if self.tls_ca is not None:
            try:
                ctx.load_verify_locations(str(self.tls_ca))
            except (OSError, ssl.SSLError) as exc:
                raise BadInputError(f"TLS CA file cannot be used: {one_line(exc)}", path=self.tls_ca,
                                    hint="give the PEM certificates of the CAs that sign the callers") from exc
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
