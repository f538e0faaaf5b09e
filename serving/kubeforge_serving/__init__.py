"""Kubeforge serving: ONNX export, quantization, Triton model repositories, a Triton launcher and client.

The ModelDeployment stage (`python -m kubeforge_serving convert --config config.yaml`) runs the
export → quantize → repository chain; `serve`, `smoke` and the client run the result on a real
`tritonserver`.
"""

from __future__ import annotations


class ServingError(RuntimeError):
    """An error with a CamelCase `reason` (lifted into StageResult) and a one-line actionable message."""

    def __init__(self, message: str, reason: str = "ConversionFailed") -> None:
        super().__init__(message)
        self.reason = reason


__all__ = ["ServingError"]
