"""Subcommands of the ``unrolled`` command line."""
