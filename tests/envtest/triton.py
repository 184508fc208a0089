"""A real Triton Inference Server (CPU) serving ONNX models through its Python backend.

The binary comes from the nvidia-pytriton wheel, unpacked by ``tests/toolchain/triton.sh``
together with a virtualenv (NumPy 1.x + ONNX Runtime) for the Python backend's stub: the stub's
pybind11 predates NumPy 2. The stub embeds the libpython of its Python version and finds its
site-packages the way pytriton arranges it: the env's ``bin`` first on PATH (the embedded
interpreter locates its prefix from the ``python3`` it finds there) and the base
interpreter's library directory on LD_LIBRARY_PATH.

Each :class:`ServedModel` becomes ``<repository>/<name>/{config.pbtxt,1/model.py,1/model.onnx}``
with a dynamic-batch copy of the ONNX file, ``max_batch_size`` and the dynamic batcher on, so
the server batches requests exactly as in production. The server listens on 127.0.0.1 only,
on free ports, and its log stays in the state directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

from model_catalog.tools.prepare import make_dynamic
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.processes import Service, spawn, terminate

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN_SCRIPT = REPO_ROOT / "tests" / "toolchain" / "triton.sh"
MODEL_TEMPLATE = Path(__file__).resolve().parent / "triton_models" / "onnxruntime_model.py"

DataType = Literal["TYPE_FP32", "TYPE_FP16"]


@dataclass(frozen=True)
class TritonToolchain:
    """The unpacked server and the Python env its Python backend runs models in."""

    server_dir: Path
    """``.../pytriton/tritonserver`` (bin/, backends/, python_backend_stubs/)."""
    python_env: Path

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @classmethod
    def locate(cls) -> TritonToolchain | None:
        """Where ``triton.sh`` put them, or None when it has not run (it is never run here:
        tests must not download)."""
        where = subprocess.run(
            ["bash", str(TOOLCHAIN_SCRIPT), "--where"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        found = cls(
            server_dir=Path(where[0]) / "pytriton" / "tritonserver", python_env=Path(where[1])
        )
        if not os.access(found.binary, os.X_OK) or not (found.python_env / ".complete").exists():
            return None
        return found


@dataclass(frozen=True)
class ServedModel:
    """One ONNX model (single input) served by the Python backend running ONNX Runtime.

    ``source`` may have a fixed batch of 1: the repository gets a dynamic-batch copy, and the
    per-item tensor shapes for config.pbtxt are read from ``source``. ``data_type`` is what
    clients send and receive; the model casts to and from the graph's own types.
    """

    name: str
    source: Path
    data_type: DataType = "TYPE_FP32"
    max_batch_size: int = 4
    max_queue_delay_us: int = 50_000
    instances: int = 1

    def write(self, repository: Path) -> None:
        """``<repository>/<name>/`` with config.pbtxt, ``1/model.py`` and ``1/model.onnx``."""
        model = onnx.load(str(self.source))
        version_dir = repository / self.name / "1"
        version_dir.mkdir(parents=True)
        (repository / self.name / "config.pbtxt").write_text(self.config(model))
        shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
        onnx.save(make_dynamic(model), str(version_dir / "model.onnx"))

    def config(self, model: onnx.ModelProto) -> str:
        """config.pbtxt for ``model`` (read before it is made dynamic: its dims are known)."""
        initializers = {init.name for init in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise ValueError(f"{self.source} has {len(inputs)} inputs; served models take one")

        def tensors(values: Sequence[onnx.ValueInfoProto]) -> str:
            return ", ".join(
                f'{{ name: "{v.name}" data_type: {self.data_type} dims: {_item_dims(v)} }}'
                for v in values
            )

        return (
            f'name: "{self.name}"\n'
            'backend: "python"\n'
            f"max_batch_size: {self.max_batch_size}\n"
            f"input [ {tensors(inputs)} ]\n"
            f"output [ {tensors(model.graph.output)} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us} }}\n"
            f"instance_group [ {{ kind: KIND_CPU count: {self.instances} }} ]\n"
        )


def _item_dims(value: onnx.ValueInfoProto) -> list[int]:
    """The dims after the batch axis; symbolic ones are -1 (variable)."""
    dims = value.type.tensor_type.shape.dim[1:]
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


class TritonServer(Service):
    """``tritonserver`` as a child process serving ``models``; a context manager.

    ``grpc_url`` is what clients (and the Triton backend) connect to.
    """

    def __init__(
        self,
        models: Sequence[ServedModel],
        state_dir: Path,
        toolchain: TritonToolchain,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args`` go to tritonserver after the ones set here (e.g. restrictions)."""
        self.models = list(models)
        self.extra_args = list(extra_args)
        self.state_dir = state_dir
        self.toolchain = toolchain
        self.repository = state_dir / "models"
        self.log_path = state_dir / "tritonserver.log"
        self.grpc_port = 0
        self.http_port = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> None:
        """Write the repository, start the server and return once every model is ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for model in self.models:
            model.write(self.repository)
        python = self._python()
        backends = self._backend_directory(python["version"])
        self.grpc_port, self.http_port = free_port(), free_port()
        argv = [
            str(self.toolchain.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--allow-metrics=false",
            "--strict-readiness=true",  # ready means every model is loaded
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]
        self._popen = spawn(
            argv, self.log_path, env=self._environment(python["libdir"]), cwd=self.state_dir
        )
        try:
            # A model that fails to load ends the server (--exit-on-error), and so the wait.
            wait_for(
                lambda: self._exited() or self._http_status("/v2/health/ready") == 200,
                timeout=timeout,
                what=f"tritonserver ready on {self.grpc_url} with {[m.name for m in self.models]}",
            )
            self.check_alive()
        except BaseException as error:
            self.stop()
            raise RuntimeError(f"{error}; tritonserver log:\n{self.log_tail()}") from error

    def check_alive(self) -> None:
        """Raise with the end of the log if the server has exited."""
        if self._exited():
            raise RuntimeError(f"tritonserver exited; end of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL: never hangs."""
        terminate(self._popen, grace)

    def _python(self) -> dict[str, str]:
        """Version and library directory of the env's interpreter (the base one's LIBDIR)."""
        probe = (
            "import json, sys, sysconfig; print(json.dumps({"
            "'version': '%d.%d' % sys.version_info[:2], "
            "'libdir': sysconfig.get_config_var('LIBDIR') or ''}))"
        )
        out = subprocess.run(
            [str(self.toolchain.python_env / "bin" / "python"), "-c", probe],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        info: dict[str, str] = json.loads(out)
        return info

    def _backend_directory(self, version: str) -> Path:
        """``backends/python`` with the stub built for the env's Python ``version`` (pytriton
        copies it the same way: the wheel has one stub per version beside the backend)."""
        source = self.toolchain.server_dir
        stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            built = sorted(p.name for p in (source / "python_backend_stubs").iterdir())
            raise FileNotFoundError(f"no Python backend stub for Python {version}; have {built}")
        backends = self.state_dir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (python / name).unlink(missing_ok=True)
            (python / name).symlink_to(source / "backends" / "python" / name)
        (python / stub.name).unlink(missing_ok=True)
        (python / stub.name).symlink_to(stub)
        return backends

    def _environment(self, libdir: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.toolchain.python_env / "bin"), env["PATH"]])
        if libdir:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
            )
        # The project's venv must not leak into the stub's interpreter.
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        return env

    def _exited(self) -> bool:
        return self._popen is not None and self._popen.poll() is not None

    def _http_status(self, path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as resp:
            return int(resp.status)
