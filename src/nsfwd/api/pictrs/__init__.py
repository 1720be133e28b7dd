"""pict-rs' external validation (:mod:`.validate`): ``POST /v1/validate``."""
