"""geovq: a-posteriori vector quantization of learned latent spaces."""

__version__ = "0.1.0"


class GeovqError(Exception):
    """An error the user can fix: the message names the bad value and what to do."""


class Interrupted(Exception):
    """Raised when a stage stops on Ctrl-C after keeping its last complete epoch."""
