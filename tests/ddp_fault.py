"""``distill`` under torchrun with a fault injected: rank 1 raises at the start of its third epoch.

Used by tests/test_ddp.py (not collected by pytest: the name does not start with ``test_``).
"""

import os
import sys

import distill.engine as engine
from distill.cli import main

_real_train_one_epoch = engine.train_one_epoch
_calls = 0


def _failing_train_one_epoch(*args, **kwargs):
    global _calls
    _calls += 1
    if int(os.environ.get("RANK", "0")) == 1 and _calls == 3:
        raise RuntimeError("injected failure on rank 1")
    return _real_train_one_epoch(*args, **kwargs)


engine.train_one_epoch = _failing_train_one_epoch

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
