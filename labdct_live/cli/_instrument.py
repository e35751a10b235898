"""The ``--instrument FILE`` option of the commands that read real frames (segment, evaluate)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from labdct_live.simulation.instrument import InstrumentFileError, load_instrument

if TYPE_CHECKING:
    from labdct_live.simulation.instrument import Instrument

__all__ = [
    "add_instrument_option",
    "instrument_from_args",
]


def add_instrument_option(parser: argparse.ArgumentParser | Any) -> None:
    """Add ``--instrument FILE`` to a command's parser (or argument group)."""
    parser.add_argument(
        "--instrument", metavar="FILE", default=None,
        help="instrument metadata file (YAML or JSON: distances, pixel size, binning, beam "
             "centre, beam stop, omega list, tube voltage, material; see "
             "docs/examples/iron_ff_labdct.yaml)")


def instrument_from_args(args: argparse.Namespace, shape: tuple[int, int] | None = None,
                         n_frames: int | None = None) -> Instrument | None:
    """The instrument of ``--instrument``, checked against the frames; None without it.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``instrument`` (see :func:`add_instrument_option`).
    shape : (int, int), optional
        Frame shape the file's ``detector.shape`` must equal.
    n_frames : int, optional
        Number of frames the file's rotation angles must count.

    Raises
    ------
    InstrumentFileError
        For a bad file or one that does not describe these frames.
    """
    path = getattr(args, "instrument", None)
    if not path:
        return None
    instrument = load_instrument(path)
    if shape is not None and tuple(shape) != instrument.geometry.detector_shape:
        raise InstrumentFileError(
            f"--instrument {path}: detector.shape {list(instrument.geometry.detector_shape)} "
            f"does not match the {shape[0]}x{shape[1]} frames")
    if n_frames is not None and n_frames != len(instrument.omegas):
        raise InstrumentFileError(
            f"--instrument {path}: the rotation has {len(instrument.omegas)} angles but the "
            f"folder has {n_frames} frames")
    return instrument
