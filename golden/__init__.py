"""Golden sets recorded with retinaface-golden; installed as package data (retinaface_export.goldens)."""
