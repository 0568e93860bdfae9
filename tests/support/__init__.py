"""Helpers the tests import (``from tests.support.x import y``) and ports of the official models.

Fixtures live in the conftest.py files, not here.
"""
