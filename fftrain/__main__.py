"""`python -m fftrain COMMAND ...`: the `fftrain` command of an installed package."""

import sys

from fftrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
