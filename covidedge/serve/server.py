"""Launch the ``tritonserver`` bundled with ``nvidia-pytriton`` for a CPU repository, or say which
NVIDIA Triton container serves a GPU repository.

The bundled server (Triton 2.51 in PyTriton 0.7) carries only the python backend, which is what
a ``--target cpu`` repository needs. What it needs to start, set here:

* a backend folder holding the python backend and the stub built for this Python version;
* ``LD_LIBRARY_PATH`` with the bundled libraries and this Python's ``LIBDIR`` (the stub links
  ``libpython3.X.so``; without it the system's copy, if any, is picked up);
* this interpreter's ``bin`` folder first on ``PATH``, so the stub's Python finds this
  environment's packages (covidedge, numpy, ONNX Runtime).

The stub of nvidia-pytriton 0.7 exchanges tensors correctly only with numpy<2 (with numpy 2,
outputs come back empty and strings garbled), so the Python it embeds is checked first;
``$COVIDEDGE_TRITON_PYTHON`` may name the python of another environment (numpy<2 and covidedge)
for the models, keeping numpy 2 in this one.

On a machine without a GPU the server logs CUDA, NVML and DCGM failures that do not matter;
:func:`is_noise` filters them from what users see (``log_file`` keeps the full log).

Nothing outlives a server, and nothing it holds is readable by other users:

* its ports are checked free before it starts (a second ``serve`` on busy ports is refused
  instead of reporting the first server's readiness);
* the python backend's shared-memory regions in ``/dev/shm`` (which hold the last request,
  patient data included) get a prefix of their own and mode 0600, and are removed when the
  server stops; regions left by a server whose covidedge process is gone are removed at the
  next start;
* a reaper process watches the covidedge process: if it dies (SIGKILL, the OOM killer), the
  reaper kills tritonserver's process group (server and python stubs), removes its shared
  memory and its working folder. tritonserver also gets SIGKILL as its parent-death signal.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

from covidedge.serve.docker import (  # noqa: F401  (re-exported)
    DEFAULT_PORTS, SUPPORT_MATRIX, TRITON_RELEASE_FOR_TENSORRT, docker_command, triton_release_for)
from covidedge.errors import BadInputError, MissingDependencyError, RuntimeFailure
from covidedge.serve.config import SERVE_INSTALL

#: The python interpreter whose environment the python-backend models run in (default: this one).
STUB_PYTHON_ENV = "COVIDEDGE_TRITON_PYTHON"
#: Seconds to wait for every model to be ready.
DEFAULT_READY_TIMEOUT = 120.0
#: Where the python backend's shared-memory regions live, and the start of their names.
SHM_FOLDER = Path("/dev/shm")
SHM_PREFIX = "covidedge_triton_"

# The reaper: runs in its own session, reads its stdin until the covidedge process that started
# it closes it (by stopping the server, or by dying), then kills the server's process group and
# removes its shared memory and working folder. Only the standard library: it must not fail.
_REAPER = r"""
import os, shutil, signal, sys
pgid, shm_folder, prefix, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
try:
    for name in os.listdir(shm_folder):
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(shm_folder, name))
            except OSError:
                pass
except OSError:
    pass
if work:
    shutil.rmtree(work, ignore_errors=True)
"""


# Lines of the bundled server that only say "no GPU here".
_NOISE = re.compile(
    r"(cuda|nvml|dcgm|gpu metrics|cudaGetDeviceCount|cudaDriverGetVersion|pinned memory pool|"
    r"CUDA memory pool|no cuda-capable device|libnvidia|nvidia driver)", re.IGNORECASE)


def is_noise(line: str) -> bool:
    """True for the server's log lines about a missing GPU, CUDA, NVML or DCGM."""
    return bool(_NOISE.search(line))


@dataclass
class BundledServer:
    """Where the bundled Triton server lives inside the installed ``nvidia-pytriton``."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_bundled_server() -> BundledServer:
    """The bundled ``tritonserver`` and its python backend for this Python, or
    MissingDependencyError with the install command."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("nvidia-pytriton (the bundled Triton server) is not installed",
                                     hint=f"install it with: {SERVE_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0])
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = root / "tritonserver"
    found = BundledServer(binary=dist / "bin" / "tritonserver", python_backend=dist / "backends" / "python",
                          stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                          libs=root.parent / "nvidia_pytriton.libs")
    for what, p in (("tritonserver", found.binary), ("python backend", found.python_backend),
                    (f"python backend stub for Python {version}", found.stub)):
        if not p.exists():
            raise MissingDependencyError(
                f"the installed nvidia-pytriton has no {what} ({p})",
                hint=f"reinstall it for this Python and machine: {SERVE_INSTALL}")
    return found


def stub_python(env: Optional[Dict[str, str]] = None) -> str:
    """The Python the python-backend models run in: ``$COVIDEDGE_TRITON_PYTHON`` when set (an
    interpreter of another environment, e.g. one with numpy<2), else this one."""
    return (os.environ if env is None else env).get(STUB_PYTHON_ENV) or sys.executable


def server_environment(server: BundledServer, base: Optional[Dict[str, str]] = None,
                       python: Optional[str] = None) -> Dict[str, str]:
    """The environment the bundled server and its python stub need (see the module notes)."""
    env = dict(os.environ if base is None else base)
    python = python or stub_python(env)
    if python == sys.executable:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
    else:
        libdir = _ask(python, "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')", env)
    paths = [p for p in (libdir, server.libs.as_posix(), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    # The stub's Python finds its environment (venv included) from the first python on PATH.
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    return env


def _ask(python: str, code: str, env: Optional[Dict[str, str]] = None) -> str:
    try:
        # -E: the stub's embedded Python ignores PYTHONPATH and friends, so the probe does too.
        probe = subprocess.run([python, "-E", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise MissingDependencyError(f"the Python for the server's models cannot run: {exc}", path=python,
                                     hint=f"set {STUB_PYTHON_ENV} to a working python, or unset it") from exc
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise MissingDependencyError(f"the Python for the server's models failed: {last}", path=python,
                                     hint="install covidedge and its runtime there")
    return probe.stdout.strip()


def check_stub_python(python: str, env: Dict[str, str]) -> Dict[str, str]:
    """Check the Python the stub will embed: same version as the stub, covidedge importable and
    numpy<2, which the stub of nvidia-pytriton 0.7 needs (with numpy 2 tensors come back empty or
    garbled). Returns its versions; MissingDependencyError saying what to install otherwise."""
    out = _ask(python, "import sys, numpy, covidedge; "
                       "print('%d.%d' % sys.version_info[:2], numpy.__version__, covidedge.__version__)", env)
    py, np_version, ce_version = out.split()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if py != here:
        raise MissingDependencyError(f"the Python for the server's models is {py}, the stub is for {here}",
                                     path=python, hint=f"point {STUB_PYTHON_ENV} at a Python {here}")
    if int(np_version.split(".")[0]) >= 2:
        raise MissingDependencyError(
            f"the bundled tritonserver's python stub needs numpy<2 (nvidia-pytriton pins it); the "
            f"environment of {python} has numpy {np_version}",
            hint=f"install it there with: pip install 'numpy<2', or set {STUB_PYTHON_ENV} to the "
                 "python of an environment that has numpy<2 and covidedge")
    return {"python": py, "numpy": np_version, "covidedge": ce_version}


def prepare_backends(server: BundledServer, folder: Path) -> Path:
    """A backend folder in ``folder`` with the python backend and this Python's stub."""
    dest = Path(folder) / "backends" / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for item in server.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    shutil.copy2(server.stub, dest / "triton_python_backend_stub")
    return dest.parent


class TritonServer:
    """One ``tritonserver`` process serving ``repository`` on 127.0.0.1 (or ``address``).

    A context manager: ``with TritonServer(repo, http_port=...) as s: s.wait_ready()``; leaving
    it (or :meth:`stop`) asks the server to shut down, then kills its process group if needed,
    so nothing is left behind. ``on_line`` receives each log line that is not GPU noise.
    """

    def __init__(self, repository, *, http_port: int = DEFAULT_PORTS["http"],
                 grpc_port: int = DEFAULT_PORTS["grpc"], metrics_port: int = DEFAULT_PORTS["metrics"],
                 address: str = "127.0.0.1", log_file=None, on_line: Optional[Callable[[str], None]] = None,
                 extra_args: Optional[List[str]] = None, exit_timeout: int = 5):
        self.repository = Path(os.fspath(repository)).resolve()
        self.ports = {"http": int(http_port), "grpc": int(grpc_port), "metrics": int(metrics_port)}
        self.address = address
        self.log_file = Path(log_file) if log_file else None
        self.on_line = on_line
        self.extra_args = list(extra_args or [])
        #: Seconds the server waits for open connections and in-flight requests when stopping.
        self.exit_timeout = int(exit_timeout)
        self.stub_versions: Dict[str, str] = {}
        self.process: Optional[subprocess.Popen] = None
        self.tail: Deque[str] = deque(maxlen=40)
        self._work: Optional[tempfile.TemporaryDirectory] = None
        self._reader: Optional[threading.Thread] = None
        self._reaper: Optional[subprocess.Popen] = None
        #: Start of this server's shared-memory region names: covidedge's pid, then a token.
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{os.urandom(4).hex()}_"

    # -- facts ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "::", "") else self.address

    @property
    def endpoints(self) -> Dict[str, str]:
        return {"http": f"http://{self.host}:{self.ports['http']}",
                "grpc": f"grpc://{self.host}:{self.ports['grpc']}",
                "metrics": f"http://{self.host}:{self.ports['metrics']}/metrics"}

    def command(self, backends: Path, binary: Path) -> List[str]:
        return [str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-port={self.ports['metrics']}", f"--http-address={self.address}",
                f"--grpc-address={self.address}", f"--metrics-address={self.address}",
                "--allow-gpu-metrics=false", "--strict-readiness=true", "--exit-on-error=true",
                f"--exit-timeout-secs={self.exit_timeout}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                *self.extra_args]

    def check_ports(self) -> None:
        """BadInputError when a port is taken (another server?), before anything starts: the
        readiness check would otherwise ask the other server."""
        import socket

        for what, port in self.ports.items():
            family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a listener
                try:                                                    # refuses, TIME_WAIT does not
                    s.bind((self.address, port))
                except OSError as exc:
                    raise BadInputError(f"{what} port {port} on {self.address} is in use ({exc.strerror or exc}); "
                                        "another server runs there?", path=self.repository,
                                        hint=f"stop it, or pass another --{what}-port") from None

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        if not self.repository.is_dir():
            raise BadInputError("repository folder not found", path=self.repository)
        server = find_bundled_server()
        self.check_ports()
        remove_stale_shm()
        self._work = tempfile.TemporaryDirectory(prefix="covidedge-triton-")
        backends = prepare_backends(server, Path(self._work.name))
        cmd = self.command(backends, server.binary)
        python = stub_python()
        env = server_environment(server, python=python)
        self.stub_versions = check_stub_python(python, env)
        log = open(self.log_file, "w", encoding="utf-8") if self.log_file else None
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True, preexec_fn=_child_setup(),
                                        text=True, errors="replace")
        self._reaper = subprocess.Popen(
            [sys.executable, "-I", "-c", _REAPER, str(self.process.pid), str(SHM_FOLDER), self.shm_prefix,
             self._work.name], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(log,), daemon=True)
        self._reader.start()
        return self

    def shm_regions(self) -> List[Path]:
        """This server's shared-memory regions (files in /dev/shm)."""
        try:
            return sorted(p for p in SHM_FOLDER.iterdir() if p.name.startswith(self.shm_prefix))
        except OSError:
            return []

    def _protect_shm(self) -> None:
        """Mode 0600 on this server's shared-memory regions: they hold requests (patient data)."""
        for p in self.shm_regions():
            try:
                os.chmod(p, 0o600)
            except OSError:
                pass

    def _read(self, log) -> None:
        try:
            for line in self.process.stdout:
                if log is not None:
                    log.write(line)
                    log.flush()
                line = line.rstrip("\n")
                if not line or is_noise(line):
                    continue
                self.tail.append(line)
                if self.on_line is not None:
                    self.on_line(line)
        finally:
            if log is not None:
                log.close()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints['http']}/v2/health/ready", timeout=1.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Block until every model is ready; RuntimeFailure with the server's last lines if the
        server exits or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                self.stop()  # no stub may outlive it
                raise RuntimeFailure(f"tritonserver exited with code {self.process.returncode} while "
                                     f"loading {self.repository}: {self.last_error()}",
                                     hint="see the lines above, or run with --log FILE for the full log")
            if self.is_ready():
                self._protect_shm()
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeFailure(f"tritonserver was not ready after {timeout:.0f} s: {self.last_error()}",
                             path=self.repository)

    def last_error(self) -> str:
        errors = [l for l in self.tail if re.match(r"^E\d{4}", l) or "error" in l.lower()]
        return " | ".join((errors or list(self.tail))[-3:]) or "no log output"

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """Ask the server to stop (SIGINT, as Ctrl-C), then kill its process group after
        ``timeout`` seconds; returns its exit code."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        # The python stubs run in the server's process group; make sure none outlives it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._join_reader()
        for region in self.shm_regions():  # a killed server leaves its regions behind
            try:
                region.unlink()
            except OSError:
                pass
        if self._reaper is not None:  # its watch is over: it finds nothing left to do
            try:
                self._reaper.stdin.close()
                self._reaper.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._reaper = None
        if self._work is not None:
            self._work.cleanup()
            self._work = None
        return p.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _child_setup():
    """What the tritonserver child runs before exec: files it creates are private (umask 077),
    and it gets SIGKILL when the process that started it dies (Linux parent-death signal). libc
    is loaded here, in the parent: nothing is imported between fork and exec."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        prctl = None

    def setup() -> None:
        os.umask(0o077)
        if prctl is not None:
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


def remove_stale_shm() -> List[str]:
    """Remove shared-memory regions of servers whose covidedge process is gone (killed before it
    could clean up); returns their names."""
    removed = []
    try:
        names = [p.name for p in SHM_FOLDER.iterdir() if p.name.startswith(SHM_PREFIX)]
    except OSError:
        return removed
    for name in names:
        try:
            pid = int(name[len(SHM_PREFIX):].split("_", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue  # its server's process is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            (SHM_FOLDER / name).unlink()
            removed.append(name)
        except OSError:
            pass
    return removed


__all__ = ["DEFAULT_PORTS", "BundledServer", "TritonServer", "find_bundled_server", "server_environment",
           "prepare_backends", "check_stub_python", "stub_python",
           "STUB_PYTHON_ENV", "is_noise", "triton_release_for", "docker_command", "remove_stale_shm",
           "SHM_FOLDER", "SHM_PREFIX",
           "TRITON_RELEASE_FOR_TENSORRT"]
