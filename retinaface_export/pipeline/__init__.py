"""The pipeline of export and convert: ``builds`` (build, verify, commit), ``export``, ``convert``."""
