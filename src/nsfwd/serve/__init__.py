"""Serving: ``nsfwd serve`` in one process (:mod:`.server`), with ``--http-workers``
(:mod:`.supervisor`), or on Ray Serve (:mod:`.ray`)."""
