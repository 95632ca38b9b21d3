"""`pixword bench`: speed and memory of training, decoding and loading."""
