"""``python -m hrm_fast``: the ``hrm-fast`` command (what ``torchrun -m hrm_fast`` runs)."""

import sys

from hrm_fast.cli import main

sys.exit(main())
