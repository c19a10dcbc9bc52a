"""The `cryophile` command: one module per subcommand."""
