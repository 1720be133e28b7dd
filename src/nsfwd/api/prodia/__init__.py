"""Prodia's job API: ``POST /v2/job`` (:mod:`.sync`), the async jobs (:mod:`.async_jobs`) and the
job document both answer with (:mod:`.job`)."""
