"""One module per `twinformer` subcommand, each with `register(subparsers)`; found automatically.

A command module imports torch / jax inside its run function, so `twinformer --help` stays fast.
"""
