"""Turning the trained PyTorch model into the files the box runs.

* :mod:`models.export.onnx_export` -- fp32 ONNX (legacy TorchScript exporter,
  needs only ``onnx``).
* :mod:`models.export.quantize` -- static INT8 ONNX, calibrated on real
  preprocessed mammograms (``quantize_dynamic`` is 17-19x slower for CNNs).
* :mod:`models.export.tflite_convert` -- INT8 TFLite via PT2E in litert-torch;
  it runs ONLY in the separate ``.venv-litert`` (``scripts/build_tflite.sh``),
  because litert-torch brings protobuf 7, which breaks flwr.
"""
