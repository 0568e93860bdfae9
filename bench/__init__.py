"""The bench suite as a package, so ``pytest tests bench`` imports ``bench.conftest`` and
``tests.conftest`` side by side."""
