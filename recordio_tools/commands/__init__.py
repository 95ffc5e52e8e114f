"""One module per recordio_tools subcommand: `add_parser(subparsers)` sets `run`."""
