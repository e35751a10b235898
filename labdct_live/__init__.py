"""labdct-live: deep-learning spot segmentation for laboratory diffraction contrast tomography.

The forward simulator (:mod:`labdct_live.simulation`), training-data synthesis
(:mod:`labdct_live.training`), the standard segmentation routine and the denoising U-Net
(:mod:`labdct_live.segmentation`, :mod:`labdct_live.models`), and Bluesky callbacks that run
them live (:mod:`labdct_live.callbacks`, :mod:`labdct_live.live`). The layers and what each
subpackage holds are drawn in ``docs/index.md``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labdct-live")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

from labdct_live import _moved  # noqa: E402 - the old module paths, after __version__

_moved.install()
