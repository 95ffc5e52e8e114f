"""The `fftrain` subcommands, one module each: parse the arguments, call the library, print.

`fftrain/cli.py` holds the table of commands; `fftrain/train.py` is the torchrun entry of `train`.
"""
