"""Subcommands of the `cupid` CLI (see cupid.cli)."""
