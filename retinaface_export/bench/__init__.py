"""``retinaface-bench``: ``run`` (the rows), ``stats`` (budgets), ``system`` (the machine), ``plot``."""
