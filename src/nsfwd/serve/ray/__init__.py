"""``nsfwd serve --ray``: the driver (:mod:`.driver`), its options without Ray
(:mod:`.options`), the Serve application (:mod:`.app`), the engine over a model deployment
(:mod:`.engine`) and what Serve's proxy runs (:mod:`.proxy`)."""
