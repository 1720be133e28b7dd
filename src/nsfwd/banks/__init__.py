"""Banks of known images: PDQ hashes (:mod:`.pdq`) of pictures once removed, kept in the job
store by name (:mod:`nsfwd.jobs.banks`), searched by Hamming distance (:mod:`.index`) before
any model runs (:mod:`.matcher`), and exchanged with trust and safety tools in
ThreatExchange's text format (:mod:`.signals`)."""
