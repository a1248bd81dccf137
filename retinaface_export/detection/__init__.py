"""Faces out of network outputs, in numpy: priors, decode, NMS, resizing, matching and F1."""
