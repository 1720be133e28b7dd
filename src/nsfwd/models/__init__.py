"""Models: finding them (:mod:`.hub`, :mod:`.names`: no torch), loading a checkpoint and its
preprocessing (:mod:`.checkpoint`), and the classifier that runs it (:mod:`.classifier`)."""
