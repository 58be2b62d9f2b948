"""Stages: one module per subcommand, each a ``run(settings, progress) -> StageResult``."""
