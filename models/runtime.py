"""The inference path the box uses: release -> preprocess -> INT8 runtime -> result.

``mammo eval`` goes through exactly this code, so the figures it prints are
the figures of what the box runs. No torch here: the box needs numpy, Pillow,
scipy, onnxruntime and (for TFLite) ai-edge-litert.

Backends (``is_available`` tells whether one can run here):

* ``onnx-int8`` (default): static INT8 ONNX via onnxruntime.
* ``tflite-int8``: INT8 TFLite via ai-edge-litert (tflite-runtime's
  successor; tflite-runtime 2.14 cannot build an Interpreter under numpy 2).
* ``onnx-fp32``: the fp32 ONNX, for parity checks.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ReleaseError, RuntimeUnavailable
from models.explain import cam_from_outputs, sigmoid
from models.preprocess import Preprocessed, WorkImage, heatmap_to_original, preprocess
from models.release_files import Release, load_release, suspicion, triage

__all__ = ["BACKENDS", "is_available", "Screener", "ScreeningResult", "evaluate_folder", "stack_input"]

log = logging.getLogger(__name__)

BACKENDS = {"onnx-int8": "model_int8.onnx", "onnx-fp32": "model_fp32.onnx", "tflite-int8": "model_int8.tflite",
            "torch-fp32": "model_fp32.pt"}


def is_available(backend: str) -> bool:
    """Whether the runtime library behind ``backend`` can be imported here."""
    try:
        if backend.startswith("onnx"):
            import onnxruntime  # noqa: F401
        elif backend.startswith("tflite"):
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
        elif backend.startswith("torch"):
            import torch  # noqa: F401
        else:
            return False
    except ImportError:
        return False
    return True


def stack_input(image: np.ndarray, other: np.ndarray | None, channels: int) -> np.ndarray:
    """(1, C, S, S) network input from preprocessed images.

    A 2-channel model also sees the same woman's other breast (the
    contralateral comparison radiologists make). Without it -- a study with
    one breast only -- the image stands in for its pair, which reads as
    "symmetric" and can only lower the score: stated in the model card.
    """
    x = np.ascontiguousarray(image, np.float32)
    if channels == 1:
        return x[None, None]
    o = x if other is None else np.ascontiguousarray(other, np.float32)
    return np.stack([x, o])[None]


class _Onnx:
    def __init__(self, path: Path, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeUnavailable(f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(ort.get_available_providers())})")
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ReleaseError(f"onnxruntime could not load {path} ({exc}); reinstall the release") from exc
        wanted = [p for p in providers if p != "CPUExecutionProvider"]
        if wanted and not set(wanted) & set(self.sess.get_providers()):
            # ORT quietly falls back to the CPU when a provider cannot start: say so instead.
            raise RuntimeUnavailable(f"onnxruntime could not start {' or '.join(wanted)} (it offered {self.sess.get_providers()})")
        self.input = self.sess.get_inputs()[0].name
        self.channels = int(self.sess.get_inputs()[0].shape[1])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, lmap = self.sess.run(None, {self.input: x})
        return score[0], lmap[0]


class _TFLite:
    def __init__(self, path: Path, threads: int, delegate: str | None = None):
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        delegates = []
        if delegate:
            try:
                ctypes.CDLL(delegate)  # fail on a broken library before LiteRT wraps it
                delegates = [load_delegate(delegate)]
            except (ValueError, OSError, RuntimeError) as exc:
                raise RuntimeUnavailable(f"TFLite delegate {delegate} failed to load ({exc})") from exc
        try:
            self.it = Interpreter(model_path=str(path), num_threads=threads, experimental_delegates=delegates or None)
            self.it.allocate_tensors()
        except Exception as exc:  # LiteRT raises RuntimeError/ValueError with C++ text
            raise ReleaseError(f"ai-edge-litert could not load {path} ({exc}); reinstall the release") from exc
        self.inp = self.it.get_input_details()[0]
        self.channels = int(self.inp["shape"][1])
        outs = self.it.get_output_details()
        # the score is (1, 2); the lesion map is NHWC (1, h, w, 2)
        self.score = next(o for o in outs if len(o["shape"]) == 2)
        self.map = next(o for o in outs if len(o["shape"]) == 4)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale, zero = self.inp["quantization"]
        if self.inp["dtype"] == np.int8:
            q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        else:
            q = x.astype(self.inp["dtype"])
        self.it.set_tensor(self.inp["index"], q)
        self.it.invoke()

        def get(d):
            v = self.it.get_tensor(d["index"])
            s, z = d["quantization"]
            return (v.astype(np.float32) - z) * s if s else v.astype(np.float32)

        return get(self.score)[0], np.transpose(get(self.map)[0], (2, 0, 1))


@dataclass(frozen=True)
class ScreeningResult:
    """What the inference worker stores for one image."""

    p_abnormal: float  # this breast alone
    p_malignant: float
    p_abnormal_other: float | None  # the other breast of the study, when given
    suspicion: float  # contralateral score the triage uses (models.release_files.suspicion)
    triage: str
    heatmap: np.ndarray  # float32 0..1 on the ORIGINAL image grid, reduced heatmap_factor times (1: full size)
    peak_xy: tuple[int, int]  # heatmap maximum, original pixels (x, y from top)
    model_version: str
    backend: str
    heatmap_factor: int = 1  # one heatmap cell = heatmap_factor x heatmap_factor original pixels


class _Torch:
    """The PyTorch fp32 original, through the same path: the peer for ``mammo bench study``."""

    def __init__(self, path: Path, threads: int, release: Release):
        import torch

        from models.network import model_from_state_dict

        torch.set_num_threads(threads)
        self.model = model_from_state_dict(torch.load(path, map_location="cpu"))
        self.channels = int(self.model.in_ch)
        self._torch = torch

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            score, lmap = self.model(self._torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return score[0].numpy(), lmap[0].numpy()


class Screener:
    """Loads a release once and scores images one at a time (batch 1)."""

    def __init__(self, release: Release | Path | str | None = None, backend: str = "onnx-int8",
                 threads: int = 2, providers: tuple[str, ...] | None = None, delegate: str | None = None):
        if backend not in BACKENDS:
            raise RuntimeUnavailable(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        if not is_available(backend):
            lib = {"onnx": "onnxruntime", "tflite": "ai-edge-litert", "torch": "torch"}[backend.split("-")[0]]
            raise RuntimeUnavailable(f"backend {backend} needs {lib}; install it (pip install {lib})")
        self.release = release if isinstance(release, Release) else load_release(release)
        self.backend = backend
        path = self.release.file(BACKENDS[backend])
        if backend.startswith("tflite"):
            self._run = _TFLite(path, threads, delegate)
        elif backend.startswith("torch"):
            self._run = _Torch(path, threads, self.release)
        else:
            self._run = _Onnx(path, threads, tuple(providers or ("CPUExecutionProvider",)))

    @property
    def channels(self) -> int:
        """1, or 2 when the model also reads the contralateral breast."""
        return self._run.channels

    def raw(self, x: np.ndarray, other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits (2,) and lesion map (2, h, w) for a preprocessed (S, S) image
        (and, for a 2-channel model, the preprocessed other breast)."""
        return self._run(stack_input(x, other, self.channels))

    def score(self, image: np.ndarray | WorkImage, other: np.ndarray | WorkImage | None = None, *,
              heatmap_side: int | None = None) -> ScreeningResult:
        """Score one raw mammogram (2-D array, any bit depth, or its :class:`WorkImage`).

        ``other`` is the same woman's other breast, same view, when the study
        has it: the triage score subtracts part of its probability (see
        :func:`models.release_files.suspicion`). Without it the CV median
        stands in, which is less informative.

        ``heatmap_side`` bounds the heatmap's longer side (the grid is the
        original's, reduced by an integer factor); None keeps the full grid.
        """
        size = self.release.input_size
        return self.score_preprocessed(preprocess(image, size), preprocess(other, size) if other is not None else None,
                                       heatmap_side=heatmap_side)

    def score_preprocessed(self, p: Preprocessed, o: Preprocessed | None = None, *,
                           heatmap_side: int | None = None) -> ScreeningResult:
        """:meth:`score` after preprocessing (the box times the two apart)."""
        other = o.image if o is not None else None
        logits, lmap = self.raw(p.image, other)
        probs = sigmoid(logits.astype(np.float64))
        p_other = None
        if other is not None:
            p_other = float(sigmoid(float(self.raw(other, p.image)[0][0])))
        pts = self.release.operating_points
        s = suspicion(float(probs[0]), p_other, pts.beta, pts.fallback_p_other)
        g = p.geometry
        f = 1 if heatmap_side is None else max(1, -(-max(g.height, g.width) // max(int(heatmap_side), 1)))
        heat = heatmap_to_original(g, cam_from_outputs(lmap, p.mask), f)
        py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peak = (min(int(px) * f + f // 2, g.width - 1), min(int(py) * f + f // 2, g.height - 1))
        return ScreeningResult(
            p_abnormal=float(probs[0]), p_malignant=float(probs[1]), p_abnormal_other=p_other,
            suspicion=s, triage=triage(s, pts), heatmap=heat,
            peak_xy=peak, model_version=self.release.version, backend=self.backend, heatmap_factor=f,
        )


def _no_nan(obj):
    """JSON has no NaN: an undefined metric (one class only) becomes null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def evaluate_folder(images: Path, release: Path | str | None = None, backend: str = "onnx-int8",
                    threads: int = 2, n_boot: int = 2000) -> dict:
    """Score every image in a mini-MIAS-shaped folder; AUCs with CIs by woman.

    On the training folder these numbers flatter the model (it has seen those
    women); they are meaningful only on women the model never saw.
    """
    from models.data import load_pixels, read_folder
    from models.evaluation import pointing_hit, summarize

    records = read_folder(images)
    screener = Screener(release, backend=backend, threads=threads)
    by_woman: dict[str, list] = {}
    for r in records:
        by_woman.setdefault(r.woman, []).append(r)
    pa, pm, sus, hits = [], [], [], []
    for r in records:
        mates = [m for m in by_woman[r.woman] if m is not r]
        other = load_pixels(mates[0]) if len(mates) == 1 else None
        res = screener.score(load_pixels(r), other)
        pa.append(res.p_abnormal)
        pm.append(res.p_malignant)
        sus.append(res.suspicion)
        if r.lesions:
            hits.append(pointing_hit(res.heatmap, [(les.x, les.y, les.radius) for les in r.lesions]))
    tissue = [r.tissue for r in records] if all(r.tissue for r in records) else None
    ab = [r.abnormal for r in records]
    women = [r.woman for r in records]
    m = summarize(ab, [r.malignant for r in records], sus, pm, women, tissue, n_boot=n_boot)
    single = summarize(ab, [r.malignant for r in records], pa, pm, women, None, n_boot=n_boot)
    out = {
        "model_version": screener.release.version,
        "backend": backend,
        "images": str(images),
        "n_images": m["n_images"],
        "n_women": m["n_women"],
        "n_abnormal": m["n_abnormal"],
        "n_malignant": m["n_malignant"],
        "score": "suspicion = p_abnormal - beta * p_abnormal(other breast)",
        "auc_abnormal": m["auc_abnormal"]["value"],
        "auc_abnormal_ci95": m["auc_abnormal"]["ci95"],
        "auc_abnormal_single_image": single["auc_abnormal"]["value"],
        "auc_abnormal_single_image_ci95": single["auc_abnormal"]["ci95"],
        "auc_malignant": m["auc_malignant"]["value"],
        "auc_malignant_ci95": m["auc_malignant"]["ci95"],
        "sens_at_90spec": m["sens_at_90spec"]["value"],
        "sens_at_90spec_ci95": m["sens_at_90spec"]["ci95"],
        "spec_at_85sens": m["spec_at_85sens"]["value"],
        "spec_at_85sens_ci95": m["spec_at_85sens"]["ci95"],
        "pointing_game": {"hits": int(sum(hits)), "n_lesion_images": len(hits)},
        "triage_counts": {},
    }
    if "per_density" in m:
        out["per_density"] = m["per_density"]
    pts = screener.release.operating_points
    for s in sus:
        t = triage(s, pts)
        out["triage_counts"][t] = out["triage_counts"].get(t, 0) + 1
    from models.operating_points import women_of_images  # per woman, through the box's own study aggregation

    out["women"] = women_of_images(records, pa, pm, pts, n_boot=n_boot)
    return _no_nan(out)
