"""The ``fraud`` command: one thin module per command, registered in ``pipeline.cli.main.COMMANDS``."""
