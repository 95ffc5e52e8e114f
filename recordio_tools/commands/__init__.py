"""One module per recordio_tools subcommand: `add_parser(subparsers)` sets `run`, which parses the
arguments, calls the library modules of recordio_tools and prints (`options` declares the flags several
commands share)."""
