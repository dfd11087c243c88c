"""DICOM ingest: receive, read defensively, auto-fix, de-identify, and keep images encrypted at rest.

Ways in (network receiver ``scp``, drop folder ``dropfolder``, ``mammo ingest``)
all call ``service.IngestService``; the per-file work (``prepare``) runs in
worker processes (``pool``) and the service only stores. Pure rules live in ``reader`` (limits),
``autofix``, ``annex_e``/``deid`` and ``studies``; storage in ``image_store``
and ``quarantine``; test data in ``mg``.
"""
