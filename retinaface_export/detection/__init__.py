"""Faces out of network outputs, in numpy: priors, decode, NMS, letterboxing, matching and F1."""
