"""INT8 TFLite from the PyTorch model via PT2E (litert-torch).

Run through ``scripts/build_tflite.sh`` in ``.venv-litert`` -- never in the
box's environment: litert-torch brings protobuf 7 (flwr needs <7), jax and
transformers. This file therefore imports only torch, numpy and
:mod:`models.network`.

    python -m models.export.tflite_convert WEIGHTS.pt CALIB.npy OUT.tflite

``CALIB.npy`` is (N, C, S, S) float32 of preprocessed REAL mammograms (written
by ``models.release``), so the activation ranges match what the box sees.
The converted model's input and outputs are int8: the runtime quantizes the
image with the input tensor's scale/zero-point and dequantizes the outputs.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def convert(weights: str, calib: str, out: str) -> None:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from models.network import model_from_state_dict

    torch.set_num_threads(1)
    model = model_from_state_dict(torch.load(weights, map_location="cpu"))
    data = np.load(calib).astype(np.float32)
    sample = (torch.from_numpy(data[:1]),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    exported = torch.export.export(model, sample).module()
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(len(data)):
            prepared(torch.from_numpy(data[i : i + 1]))
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    convert(*sys.argv[1:])
