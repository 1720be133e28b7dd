"""Batch classification: ``nsfwd classify`` over files (:mod:`.pipeline`), its records
(:mod:`.output`), inputs beyond local files (:mod:`.sources`) and on a Ray cluster
(:mod:`.ray_data`)."""
