"""The coordinator's side of federated sync: it aggregates encrypted updates and never holds a secret key.

``strategy``  FedBuff-style buffered asynchronous aggregation, as pure functions (K or deadline, staleness bound and weighting, de-duplication)
``store``     its own SQLite in the coordinator's home: received updates (idempotent by hash), rounds, model generations
``manifest``  the signed round manifest a box checks its update against

The Flower ServerApp, the service loop and releases sit beside these (``service``, ``releases``) and call them.
"""
