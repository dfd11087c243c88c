"""fp32 ONNX export of the screening network (:class:`models.network.ScreeningNet`
or :class:`models.lite.LiteNet`: same input and outputs).

The legacy TorchScript exporter (``dynamo=False``) is used on purpose: it needs
only ``onnx`` (the dynamo exporter needs ``onnxscript``) and writes a single
self-contained file; both match PyTorch within ~3e-8 here. Batch is fixed at 1
because the box scores one image at a time and static shapes quantize and run
best.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from models.network import OUTPUT_NAMES
from models.preprocess import INPUT_SIZE

__all__ = ["export_onnx", "INPUT_NAME"]

INPUT_NAME = "image"


def export_onnx(model: nn.Module, out: Path, size: int = INPUT_SIZE, opset: int = 17) -> Path:
    """Write ``out`` (fp32, input ``image`` (1,C,S,S), outputs score, lesion_map)."""
    model = model.eval()
    dummy = torch.zeros(1, model.in_ch, size, size)
    with warnings.catch_warnings():
        # the legacy exporter announces its own deprecation; we chose it knowingly
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(out), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    return Path(out)
