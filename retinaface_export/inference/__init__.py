"""Artifacts and checkpoints opened with their runtimes, and the Detector: images in, faces out."""
