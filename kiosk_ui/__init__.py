"""The family doctor's kiosk: a Turkish web UI served by the box, offline.

``create_app(settings, services)`` (:mod:`kiosk_ui.app`) builds the Litestar
app over :class:`kiosk_ui.services.KioskServices`, the typed view of the box
database; :mod:`kiosk_ui.server` serves it for ``mammo up``. Templates,
static assets (including the DejaVu Sans font) and the string catalogs live
beside the code: nothing is fetched from outside the box.
"""
