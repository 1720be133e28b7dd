"""nsfwd on a cluster: hosts that run the same classifier and pipeline on Ray."""
