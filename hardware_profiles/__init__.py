"""Hardware profiles: declarative TOML files, detection of what a box offers, and the choice between them.

``profiles/*.toml`` describe how to run the model on a kind of box (runtime,
provider or delegate, threads, batch, precision, latency budget, memory
cap).  :func:`detect.detect` reads the machine; :func:`select.choose` is a
pure function of the two and says why it picked what it picked.
"""
