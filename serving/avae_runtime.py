"""MLServer runtime for the graphs of an avae-purify bundle: each model is one ONNX graph run by
ONNX Runtime on the CPU, served over the Open Inference Protocol (KServe v2).

Written into the MLServer layout by `cargo run --example serving` (src/engine/kserve/repository.rs);
the layout's model-settings.json name this class as their implementation. The model metadata
(inputs, outputs, data types, shapes) is taken from the loaded graph itself, so what the server
reports is what it runs: avaepurify's backend=kserve compares it with the bundle at start.
"""

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

# ONNX element type names (as ONNX Runtime reports them) -> protocol data types.
_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


def _metadata(values):
    return [
        MetadataTensor(
            name=v.name,
            datatype=_DATATYPES[v.type],
            shape=[d if isinstance(d, int) else -1 for d in v.shape],
        )
        for v in values
    ]


class OnnxGraph(MLModel):
    """One ONNX graph on ONNX Runtime (CPU execution provider)."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        threads = int(os.environ.get("AVAE_SERVING_THREADS", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            uri, options, providers=["CPUExecutionProvider"]
        )
        self.inputs = _metadata(self._session.get_inputs())
        self.outputs = _metadata(self._session.get_outputs())
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {
            request_input.name: NumpyCodec.decode_input(request_input)
            for request_input in payload.inputs
        }
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.ascontiguousarray(value))
                for name, value in zip(self._output_names, results)
            ],
        )
