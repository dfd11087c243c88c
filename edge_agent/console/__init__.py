"""``mammo console``: the technician's Textual console.

``data`` reads the box into frozen records and performs the few actions
(requeue, activate, roll back) through the same functions the CLI uses;
``app`` only draws those records and forwards keys.  ``i18n`` holds the
Turkish and English words.  Textual is imported only by ``app``, and ``app``
only when the console starts, so the rest of ``mammo`` stays quick to load.
"""
