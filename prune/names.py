"""Names the command line offers before anything heavy loads (``prune --help`` imports no torch)."""

IMPORTANCES = ("l1", "l2", "taylor", "bn-scale", "lamp", "fpgm")
TARGET_KINDS = ("params", "macs", "ratio")
