"""geovq: a-posteriori vector quantization of learned latent spaces."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version literal lives in pyproject.toml
    __version__ = version("geovq")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


class GeovqError(Exception):
    """An error the user can fix: the message names the bad value and what to do."""


class Interrupted(Exception):
    """Raised when a stage stops on Ctrl-C after keeping its last complete epoch."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, or torchrun stopping the other ranks) as an interrupt: every cleanup
    that runs on Ctrl-C (temporary files, staging folders, the kept epoch) runs on it too."""
