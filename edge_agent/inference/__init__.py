"""Screening on the box: the inference worker, study-level triage and model activation.

    infer queue ──► worker: load views from the encrypted store ─► preprocess ─► active model
                      ─► per-view scores + heatmaps ─► per-breast, per-study aggregate ─► triage
                      ─► infer_results / infer_views (+ sealed heatmaps) and a ``report`` job, in one ack
"""
