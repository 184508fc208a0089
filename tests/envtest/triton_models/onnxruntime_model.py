"""Triton Python-backend model that runs an ONNX file with ONNX Runtime (CPU).

Copied by :mod:`tests.envtest.triton` into ``<repository>/<model>/1/model.py`` next to
``model.onnx``. The tensor names and data types come from the model's config.pbtxt, so one file
serves the FP32 and the FP16 variants: inputs are cast to what the ONNX graph takes and outputs
to what the config declares. Every request the dynamic batcher hands over in one ``execute``
runs as one ONNX Runtime call, so server-side batching is real batching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class TritonPythonModel:
    """The Python backend's model protocol: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        model_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one instance per core is the server's business
        self._session = ort.InferenceSession(str(model_file), options, ["CPUExecutionProvider"])
        (model_input,) = self._session.get_inputs()
        self._input_name: str = config["input"][0]["name"]
        self._input_dtype = _ORT_DTYPES[model_input.type]
        self._outputs: list[tuple[str, Any]] = [
            (out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
            for out in config["output"]
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        """One ONNX Runtime call for all requests; each gets its own rows back."""
        batches = [
            pb_utils.get_input_tensor_by_name(request, self._input_name).as_numpy()
            for request in requests
        ]
        joined = np.concatenate(batches).astype(self._input_dtype, copy=False)
        names = [name for name, _ in self._outputs]
        outputs = self._session.run(names, {self._session.get_inputs()[0].name: joined})
        responses = []
        start = 0
        for batch in batches:
            stop = start + len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop], dtype))
                for (name, dtype), out in zip(self._outputs, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
