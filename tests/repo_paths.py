"""Where the tests are: the repository root and the tests folder (test files sit one level below it)."""

import pathlib

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
