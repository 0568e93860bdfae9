"""``python -m hrm_fast.compile_report``: what CMakeLists.txt runs (``hrm-fast kernels-report``)."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
