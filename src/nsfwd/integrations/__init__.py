"""nsfwd inside the platforms that need it: :mod:`.synapse` (a Matrix Synapse module). Each
imports only what its host has (no FastAPI, torch or Pillow)."""
