"""Opportunistic local training with differential privacy (issue 12): the box learns from its own confirmed cases.

Where things are (each module's docstring says why it is built that way):

    examples.py    which studies are labels (a radiologist's word, never the AI's), images in memory only
    policy.py      may a round run now? a pure function of the box's state
    observe.py     reading that state (queue, clock, load, temperature, power)
    ledger.py      the privacy ledger: budget per model generation, rounds reserved before they run
    checkpoint.py  atomic, checked checkpoints of a round
    runner.py      one round in its own process: features, DP-SGD (models.dp), gate, update
    gate.py        a local model serves only if it beats the active one on held-back women
    sink.py        the update envelope and its sink (sync's outbox, reached by name)
    service.py     the daemon's scheduler (APScheduler, job store in MAMMO_HOME)
    cli.py         `mammo train status|run`, `mammo bench train`
"""
