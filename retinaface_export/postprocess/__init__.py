"""Post-processing inside an artifact: the modes and their settings (``settings``); no graph library here."""
