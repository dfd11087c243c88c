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

Conv + ReLU6 is quantized as ONE unit (:func:`_quantizer`): litert-torch's
quantizer fuses conv + ReLU but makes ReLU6 (hardtanh) share its input's
quantization, so a convolution's output was quantized over its whole
pre-activation range. For ImageNet EfficientNet-Lite weights that range is
tens of units wide, and model 0.2's INT8 TFLite drifted by up to 0.37 in
probability from fp32; observed after the clamp, the range is [0, 6], as
onnxruntime's quantizer does.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def _quantizer():
    """litert-torch's PT2E quantizer, plus conv + ReLU6 (hardtanh 0..6) as a fused pattern."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize import pt2e_quantizer_utils as qu

    convs = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)

    @qu.register_annotator("conv_relu6")
    def _annotate_conv_relu6(gm, quantization_config, filter_fn=None):
        done = []
        for n in gm.graph.nodes:
            if n.op != "call_function" or n.target not in clamps:
                continue
            conv = n.args[0]
            if not (isinstance(conv, torch.fx.Node) and conv.op == "call_function" and conv.target in convs):
                continue
            qmap = {conv.args[0]: qu.get_input_act_qspec(quantization_config),
                    conv.args[1]: qu.get_weight_qspec(quantization_config)}
            partition = [n, conv, conv.args[1]]
            bias = conv.args[2] if len(conv.args) > 2 else None
            if isinstance(bias, torch.fx.Node):
                qmap[bias] = qu.get_bias_qspec(quantization_config)
                partition.append(bias)
            if qu._is_annotated(partition) or (filter_fn and any(not filter_fn(p) for p in partition)):
                continue
            conv.meta["quantization_annotation"] = qu.QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
            n.meta["quantization_annotation"] = qu.QuantizationAnnotation(
                output_qspec=qu.get_output_act_qspec(quantization_config), _annotated=True)
            qu._mark_nodes_as_annotated(partition)
            done.append(partition)
        return done

    class Quantizer(pt2e_quantizer.PT2EQuantizer):
        STATIC_OPS = ["conv_relu6", *pt2e_quantizer.PT2EQuantizer.STATIC_OPS]

    return Quantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))


def convert(weights: str, calib: str, out: str) -> None:
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from models.network import model_from_state_dict

    torch.set_num_threads(1)
    model = model_from_state_dict(torch.load(weights, map_location="cpu"))
    data = np.load(calib).astype(np.float32)
    sample = (torch.from_numpy(data[:1]),)
    quantizer = _quantizer()
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
