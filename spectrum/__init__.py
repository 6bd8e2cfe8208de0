"""token-spectrum: learning-time spectra of per-token loss trajectories."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("token-spectrum")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
