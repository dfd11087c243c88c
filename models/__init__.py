"""The screening model: preprocessing, network, training, evaluation, export.

Where things are (each module's docstring says why it is built that way):

    preprocess.py     ONE preprocessing path for training and the box
    network.py        MobileNetV2-style net; its lesion map is the heatmap
    synthetic.py      synthetic mammograms with ground truth (tests, demos)
    data.py           mini-MIAS-shaped folders; folds by woman
    training.py       the recipe (lesion-supervised, augmentation after split)
    crossval.py       woman-level k-fold CV -> cv_metrics.json
    evaluation.py     AUC, operating points, bootstrap CIs by woman
    export/           fp32 ONNX, static INT8 ONNX, INT8 TFLite (own venv)
    explain.py        CAM from runtime outputs; Grad-CAM for development
    runtime.py        the box's inference path (ONNX Runtime / LiteRT)
    release_files.py  release folder, manifest, operating points, triage
    release_build.py  builds models/release/<version>/
    model_card.py     renders MODEL_CARD.md from measured numbers
    bench.py          `mammo bench infer`
    cli.py            `mammo train`, `mammo eval`, `mammo bench infer`

Rebuilding a release from scratch (about an hour on 2 cores)::

    python -m models.cli train --cv --out runs/cv          # 5-fold CV, by woman
    python -m models.cli train --out runs/final            # all 129 women
    python -m models.release_build --final runs/final/final.pt --cv runs/cv --version X.Y.Z
    python -m models.cli bench infer --json > bench.json   # then copy the last line
    python -m models.model_card models/release/X.Y.Z       # re-render card + manifest
"""
