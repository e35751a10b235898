"""labdct-live: deep-learning spot segmentation for laboratory diffraction contrast tomography.

The forward simulator (:mod:`labdct_live.simulate`), training-data synthesis, the standard
segmentation routine and the denoising U-Net, and Bluesky callbacks that run them live.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labdct-live")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
