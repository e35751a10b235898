"""The simulated LabDCT instrument for Bluesky: a rotation stage and an area detector (ophyd v1).

* :func:`make_rotation_stage`: an ``ophyd.sim.SynAxis`` in degrees, named ``rotation``.
* :class:`LabDCTDetector`: frames from :class:`labdct_live.simulation.forward.Simulator` at the
  rotation stage's current angle, plus a background and Poisson noise that scale with the detector's
  ``exposure`` signal (seconds)::

      expected = (exposure / reference_exposure) * (clean + background_rate * background)
      frame    = Poisson(expected) + dark_offset        (beam stop 0, clipped, uint16)

  ``clean`` is the simulator's spot image (counts above background at the reference
  exposure) and ``background`` a normalised image in ``[0, 1]`` (by default the procedural
  LabDCT background of :mod:`labdct_live.simulation.background`). Spot means above background grow
  linearly with exposure and the noise as its square root, so SNR grows as √exposure.

Two modes:

``"stream"`` (default)
    Like a modern area detector: each frame is appended to one HDF5 file per run (dataset
    :data:`HDF5_DATASET`, ``(n, rows, cols)`` uint16, chunk = one frame, written in SWMR mode
    so readers can follow it live) and announced with a ``StreamResource`` document (once per
    run) and one ``StreamDatum`` per frame. The device follows bluesky's ``WritesStreamAssets``
    protocol (:meth:`~LabDCTDetector.collect_asset_docs`, :meth:`~LabDCTDetector.get_index`):
    in a step scan the RunEngine calls ``collect_asset_docs()`` after each ``read`` and emits
    the documents just before the event, filling in ``run_start``, ``descriptor`` and
    ``seq_nums``. The image's data key is described with ``external="STREAM:"`` and is absent
    from the events' data.
``"embedded"``
    The image is in each event (for small tests).

Frames are deterministic given ``seed``: frame ``i`` of a run (counted from ``stage``) draws
its noise from ``numpy.random.default_rng([seed, i])``. Clean projections are cached by omega
(LRU, stored sparse) so that repeated scans only pay for the noise.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from event_model import ComposeStreamResource, StreamRange
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import DeviceStatus

from labdct_live.simulation.background import background_for_geometry
from labdct_live.simulation.forward import Projection, Simulator
from labdct_live.simulation.geometry import Geometry, GeometryError

__all__ = [
    "HDF5_COMPLETE",
    "HDF5_DATASET",
    "HDF5_MIMETYPE",
    "IMAGE_DTYPE",
    "DetectorError",
    "LabDCTDetector",
    "make_rotation_stage",
    "scaled_geometry",
]

logger = logging.getLogger(__name__)

#: Path of the frame stack inside each run's HDF5 file (the areaDetector NeXus convention).
HDF5_DATASET = "/entry/data/data"

#: Scalar uint8 dataset: 1 once the file was closed cleanly, 0 while (or if never) it was.
HDF5_COMPLETE = "/entry/complete"

#: ``mimetype`` of the StreamResource documents (bluesky-tiled-plugins' HDF5 consolidator).
HDF5_MIMETYPE = "application/x-hdf5"

#: numpy dtype string of the frames, as written to ``dtype_numpy`` in ``describe()``.
IMAGE_DTYPE = np.dtype(np.uint16).str  # "<u2"

_MODES = ("stream", "embedded")


class DetectorError(ValueError):
    """An invalid detector setting; the message names the parameter."""


def make_rotation_stage(name: str = "rotation", value: float = 0.0, delay: float = 0.0) -> SynAxis:
    """The simulated rotation stage: an ``ophyd.sim.SynAxis`` in degrees.

    Parameters
    ----------
    name : str
        Device name; also the data key of its readback.
    value : float
        Initial angle (degrees).
    delay : float
        Simulated move time (seconds).
    """
    return SynAxis(name=name, value=value, delay=delay, egu="deg")


def scaled_geometry(geometry: Geometry, detector_shape: tuple[int, int]) -> Geometry:
    """:meth:`Geometry.binned <labdct_live.simulation.geometry.Geometry.binned>`, raising
    :class:`DetectorError`: the geometry of a detector read out with ``detector_shape``.

    Examples
    --------
    >>> scaled_geometry(Geometry(), (256, 256)).detector_shape
    (256, 256)
    """
    try:
        return geometry.binned(detector_shape)
    except GeometryError as exc:
        raise DetectorError(str(exc)) from exc


# ------------------------------------------------------------------------------ helpers
@dataclass
class _SparseProjection:
    """A projection's clean image and labels on their non-zero pixels only (for the cache)."""

    omega: float
    index: np.ndarray  # flat pixel indices
    clean: np.ndarray  # float32 values there
    labels: np.ndarray  # int32 values there
    spots: pd.DataFrame

    @classmethod
    def from_projection(cls, projection: Projection) -> _SparseProjection:
        index = np.flatnonzero((projection.clean != 0) | (projection.labels != 0))
        index = index.astype(np.int32 if projection.clean.size < 2**31 else np.int64)
        return cls(projection.omega, index, projection.clean.ravel()[index],
                   projection.labels.ravel()[index], projection.spots)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.clean.nbytes + self.labels.nbytes

    def to_projection(self, shape: tuple[int, int], beamstop: np.ndarray,
                      background_level: float) -> Projection:
        clean = np.zeros(shape, dtype=np.float32)
        labels = np.zeros(shape, dtype=np.int32)
        clean.ravel()[self.index] = self.clean
        labels.ravel()[self.index] = self.labels
        frame = np.clip(np.rint(clean + background_level), 0, 65535).astype(np.uint16)
        frame[beamstop] = 0
        return Projection(omega=self.omega, frame=frame, clean=clean, labels=labels,
                          spots=self.spots.copy())


class _HDF5FrameWriter:
    """Appends uint16 frames to a ``(n, rows, cols)`` dataset of a new HDF5 file, SWMR mode.

    The scalar dataset :data:`HDF5_COMPLETE` is 0 while frames are being written and 1 once
    the file is closed cleanly, so a file left by a crash is recognisable. (A dataset, not an
    attribute: SWMR allows writing existing datasets only, and reopening the file to add an
    attribute would fail while a reader in another process holds it open.)
    """

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.path = path
        self.n_frames = 0
        self._file = h5py.File(path, "w", libver="latest")
        self._complete = self._file.create_dataset(HDF5_COMPLETE, data=np.uint8(0))
        rows, cols = shape
        self._dataset = self._file.create_dataset(
            HDF5_DATASET, shape=(0, rows, cols), maxshape=(None, rows, cols),
            chunks=(1, rows, cols), dtype=np.uint16)
        self._file.swmr_mode = True  # readers may open the file with swmr=True while we write

    def write(self, frame: np.ndarray, index: int) -> None:
        """Write a frame at ``index`` (the next one, or one written before again) and flush."""
        if not 0 <= index <= self.n_frames:
            raise IndexError(f"frame {index} of a file holding {self.n_frames} frames")
        if index == self.n_frames:
            self._dataset.resize(index + 1, axis=0)
            self.n_frames = index + 1
        self._dataset[index] = frame
        self._dataset.flush()

    def close(self) -> None:
        self._complete[()] = 1
        self._complete.flush()
        self._file.close()


# ------------------------------------------------------------------------------ signals
class _ExposureSignal(Signal):
    """Exposure time in seconds; only finite positive values are accepted."""

    def check_value(self, value) -> None:
        super().check_value(value)
        try:
            ok = math.isfinite(float(value)) and float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DetectorError(f"{self.name} must be a positive exposure time in seconds, "
                                f"got {value!r}")

    def describe(self) -> dict:
        desc = super().describe()
        desc[self.name]["units"] = "s"
        return desc


class _FrameSignal(Signal):
    """The detector image: in the events (embedded mode) or announced as a stream (stream mode).

    Its value is always the latest frame, whatever the mode.
    """

    def describe(self) -> dict:
        detector = self.parent
        key = {
            "source": f"SIM:{detector.name}",
            "dtype": "array",
            "dtype_numpy": IMAGE_DTYPE,
            "shape": list(detector.geometry.detector_shape),
            "dims": ["row", "col"],
        }
        if detector.mode == "stream":
            key["external"] = "STREAM:"
        return {self.name: key}

    def read(self) -> dict:
        if self.parent.mode == "stream":
            return {}  # STREAM: data keys are announced by StreamDatum documents, not events
        return super().read()


# ------------------------------------------------------------------------------ detector
class LabDCTDetector(Device):
    """Simulated LabDCT area detector: simulator frames, background and Poisson noise.

    Parameters
    ----------
    simulator : Simulator
        The forward model (sample + geometry) whose projections the detector sees.
    rotation : positioner
        The rotation stage (e.g. :func:`make_rotation_stage`); its ``position`` (degrees) at
        trigger time is the frame's omega.
    name : str
        Device name; the data keys are ``<name>_image`` and ``<name>_exposure``.
    mode : {"stream", "embedded"}
        Frames to an HDF5 file per run with StreamResource/StreamDatum documents, or in the
        events.
    write_dir : path-like
        Directory for the HDF5 files (stream mode; required there). A tiled catalog that
        registers the files must list it in its ``readable_storage``.
    seed : int or None
        Noise seed; frame ``i`` of a run uses ``default_rng([seed, i])``. None: fresh noise.
    exposure : float
        Initial exposure time (s).
    reference_exposure : float
        Exposure (s) at which the expected counts equal the simulator's clean image plus
        ``background_rate`` times the background.
    background_rate : float or None
        Background counts at the reference exposure where the normalised background is 1;
        the simulator's ``background_level`` (C_BG) when None.
    dark_offset : float
        Constant added after the noise (counts), e.g. a camera's offset.
    background : ndarray or None
        Normalised background image in ``[0, 1]`` of the detector's shape; None: the
        procedural background of :func:`labdct_live.simulation.background.background_for_geometry`
        drawn with ``background_seed``.
    background_seed : int or None
        Seed of the procedural background (``seed`` when None).
    cache_mb : float
        Memory for clean projections (LRU cache by omega, stored on their non-zero pixels:
        about 5 MB per D35 frame at 2032², so the default keeps a whole 181-frame scan);
        0 disables the cache.

    Attributes
    ----------
    last_projection : Projection or None
        Ground truth of the latest frame (clean image, labels, spot table).
    last_file : Path or None
        The HDF5 file of the current (or last) run in stream mode.

    Examples
    --------
    A small instrument (the D18 sample, 128² pixels) and a three-frame scan; with a catalog,
    use the default stream mode and give ``write_dir``:

    >>> from bluesky import RunEngine
    >>> from labdct_live.simulation.microstructure import make_sample
    >>> from labdct_live.acquisition.plans import labdct_scan
    >>> from labdct_live.simulation.presets import preset
    >>> spec, geometry = preset("D18")
    >>> sim = Simulator(make_sample(spec, seed=1), scaled_geometry(geometry, (128, 128)))
    >>> rotation = make_rotation_stage()
    >>> det = LabDCTDetector(simulator=sim, rotation=rotation, name="labdct",
    ...                      mode="embedded", seed=1)
    >>> RE = RunEngine({})
    >>> (uid,) = RE(labdct_scan(det, rotation, start=0, stop=20, step=10, exposure=2.0))
    >>> det.image.get().shape, rotation.position, det.last_projection.omega
    ((128, 128), 20.0, 20.0)
    """

    image = Cpt(_FrameSignal, kind="normal")
    exposure = Cpt(_ExposureSignal, value=1.0, kind="normal")
    reference_exposure = Cpt(Signal, value=1.0, kind="config")
    background_rate = Cpt(Signal, value=0.0, kind="config")
    dark_offset = Cpt(Signal, value=0.0, kind="config")

    def __init__(
        self,
        prefix: str = "",
        *,
        simulator: Simulator,
        rotation,
        name: str = "labdct",
        mode: str = "stream",
        write_dir: str | Path | None = None,
        seed: int | None = None,
        exposure: float = 1.0,
        reference_exposure: float = 1.0,
        background_rate: float | None = None,
        dark_offset: float = 0.0,
        background: np.ndarray | None = None,
        background_seed: int | None = None,
        cache_mb: float = 1024.0,
        **kwargs,
    ) -> None:
        if mode not in _MODES:
            raise DetectorError(f"mode must be one of {_MODES}, got {mode!r}")
        if mode == "stream" and write_dir is None:
            raise DetectorError("write_dir is required in stream mode: pass the directory for "
                                "the HDF5 files (and list it in the catalog's readable_storage)")
        if not (math.isfinite(reference_exposure) and reference_exposure > 0):
            raise DetectorError(f"reference_exposure must be a positive time in seconds, got "
                                f"{reference_exposure!r}")
        if background_rate is None:
            background_rate = simulator.background_level
        if not (math.isfinite(background_rate) and background_rate >= 0):
            raise DetectorError(f"background_rate must be >= 0 counts, got {background_rate!r}")
        if not (math.isfinite(dark_offset) and 0 <= dark_offset < 65535):
            raise DetectorError(f"dark_offset must be in [0, 65535) counts, got {dark_offset!r}")
        if not cache_mb >= 0:
            raise DetectorError(f"cache_mb must be >= 0 (megabytes), got {cache_mb!r}")
        super().__init__(prefix, name=name, **kwargs)
        self.simulator = simulator
        self.rotation = rotation
        self.mode = mode
        self.write_dir = None if write_dir is None else Path(write_dir).resolve()
        self.seed = seed
        self.cache_bytes = int(cache_mb * 1e6)
        self.exposure.put(exposure)
        self.reference_exposure.put(float(reference_exposure))
        self.background_rate.put(float(background_rate))
        self.dark_offset.put(float(dark_offset))

        geometry = simulator.geometry
        self._beamstop = geometry.beamstop_mask()
        if background_seed is None:
            background_seed = seed
        self._background = self._background_image(background, geometry, background_seed)
        self._cache: OrderedDict[float, _SparseProjection] = OrderedDict()
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._frame_counter = 0
        self._writer: _HDF5FrameWriter | None = None
        self._stream_resource: dict | None = None
        self._compose_datum = None
        self._resource_sent = False
        self._announced = 0
        self._next_position = 0  # where the next triggered frame goes in the file
        self._generation = 0  # advanced at each pause: frames of older triggers are dropped
        self._write_lock = threading.Lock()
        self.last_projection: Projection | None = None
        self.last_file: Path | None = None

    # ---------------------------------------------------------------- simulation
    @property
    def geometry(self) -> Geometry:
        """The acquisition geometry of the simulator."""
        return self.simulator.geometry

    @property
    def background(self) -> np.ndarray:
        """The normalised background image (float32, ``[0, 1]``)."""
        return self._background

    def sample_metadata(self) -> dict:
        """The simulated sample: its specification and seed (for the start document)."""
        sample = self.simulator.sample
        return {"spec": sample.spec.to_dict(), "seed": sample.seed,
                "n_grains": int(sample.n_grains)}

    @staticmethod
    def _background_image(background, geometry: Geometry, seed) -> np.ndarray:
        if background is None:
            return background_for_geometry(geometry, seed=seed).render()
        image = np.asarray(background, dtype=np.float32)
        if image.shape != geometry.detector_shape:
            raise DetectorError(f"background has shape {image.shape}, the detector "
                                f"{geometry.detector_shape}: pass an image of the detector's shape")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise DetectorError("background must be a normalised image with values in [0, 1]")
        return image

    def projection(self, omega: float) -> Projection:
        """The noise-free simulated projection at ``omega`` (degrees), through the LRU cache."""
        key = round(float(omega), 6)
        shape = self.geometry.detector_shape
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is None:
            projection = self.simulator.project(key)
            cached = _SparseProjection.from_projection(projection) if self.cache_bytes else None
            if cached is not None and cached.nbytes <= self.cache_bytes:
                with self._cache_lock:
                    if key not in self._cache:
                        self._cache[key] = cached
                        self._cached_bytes += cached.nbytes
                    while self._cached_bytes > self.cache_bytes:
                        _, evicted = self._cache.popitem(last=False)
                        self._cached_bytes -= evicted.nbytes
            return projection
        return cached.to_projection(shape, self._beamstop, self.simulator.background_level)

    def expected_counts(self, clean: np.ndarray, exposure: float) -> np.ndarray:
        """Mean counts before noise and offset for a clean spot image at ``exposure`` (s)."""
        scale = float(exposure) / float(self.reference_exposure.get())
        rate = float(self.background_rate.get())
        return scale * (clean.astype(np.float64) + rate * self._background)

    def simulate_frame(self, omega: float, exposure: float, frame_index: int = 0
                       ) -> tuple[np.ndarray, Projection]:
        """One noisy frame and its ground truth, without the RunEngine.

        Parameters
        ----------
        omega : float
            Rotation angle (degrees).
        exposure : float
            Exposure time (s).
        frame_index : int
            Index of the frame in its run (selects the noise stream with ``seed``).

        Returns
        -------
        frame : ndarray of uint16, shape (rows, cols)
            ``Poisson(expected_counts) + dark_offset``, clipped to 65535; 0 in the beam stop.
        projection : Projection
            The noise-free projection (clean image, labels, spots).
        """
        if not (math.isfinite(exposure) and exposure > 0):
            raise DetectorError(f"exposure must be a positive time in seconds, got {exposure!r}")
        projection = self.projection(omega)
        expected = self.expected_counts(projection.clean, exposure)
        entropy = None if self.seed is None else [int(self.seed), int(frame_index)]
        counts = np.random.default_rng(entropy).poisson(expected).astype(np.float64)
        counts += float(self.dark_offset.get())
        frame = np.clip(counts, 0, 65535).astype(np.uint16)
        frame[self._beamstop] = 0
        return frame, projection

    # ---------------------------------------------------------------- bluesky interface
    def stage(self):
        staged = super().stage()
        self._frame_counter = 0
        self._next_position = 0
        if self.mode == "stream":
            try:
                self._open_stream()
            except Exception:
                super().unstage()
                raise
        return staged

    def unstage(self):
        try:
            self._close_stream()
        except Exception:
            super().unstage()
            raise
        return super().unstage()

    def _open_stream(self) -> None:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        path = self.write_dir / f"{self.name}_{uuid.uuid4().hex}.h5"
        self._writer = _HDF5FrameWriter(path, self.geometry.detector_shape)
        self.last_file = path
        bundle = ComposeStreamResource()(
            mimetype=HDF5_MIMETYPE,
            uri=path.as_uri().replace("file://", "file://localhost", 1),
            data_key=self.image.name,
            parameters={"dataset": HDF5_DATASET,
                        "chunk_shape": [1, *self.geometry.detector_shape],
                        "swmr": True},
        )
        self._stream_resource, self._compose_datum = bundle
        self._resource_sent = False
        self._announced = 0
        logger.info("%s: writing frames to %s", self.name, path)

    def _close_stream(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            logger.info("%s: closed %s with %d frames", self.name, writer.path, writer.n_frames)

    def trigger(self) -> DeviceStatus:
        """Acquire one frame at the rotation stage's current angle (in a worker thread)."""
        status = DeviceStatus(self)
        omega = float(self.rotation.position)
        exposure = float(self.exposure.get())
        frame_index = self._frame_counter
        self._frame_counter += 1
        with self._write_lock:
            position, generation = self._next_position, self._generation
            self._next_position += 1

        def acquire() -> None:
            try:
                frame, projection = self.simulate_frame(omega, exposure, frame_index)
                with self._write_lock:
                    if generation != self._generation:
                        logger.info("%s: frame %d dropped: its step was taken again",
                                    self.name, frame_index)
                    else:
                        if self._writer is not None:
                            self._writer.write(frame, position)
                        self.last_projection = projection
                        self.image.put(frame)
            except Exception as exc:
                logger.exception("%s: frame %d at omega %.3f failed", self.name, frame_index, omega)
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def pause(self) -> None:
        """Called by the RunEngine when it pauses: it will rewind to the last checkpoint.

        Frames triggered since and not yet announced will never be read; the triggers that
        redo them write to the same places in the file (so it holds one frame per event, in
        order, with no gap), and a superseded frame still exposing is dropped when it ends.
        """
        super().pause()
        with self._write_lock:
            self._generation += 1
            self._next_position = self._announced

    def get_index(self) -> int:
        """Number of frames written to this run's file (``WritesStreamAssets``)."""
        return 0 if self._writer is None else self._writer.n_frames

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """StreamResource (once per run) and StreamDatum documents of new frames.

        Parameters
        ----------
        index : int or None
            Announce frames up to this index (fly scans, ``collect``). None (a step scan's
            ``read``) announces the newest frame (a frame taken again after a rewind has
            replaced the one that was never read, see :meth:`pause`).
        """
        if self._writer is None:
            return
        if not self._resource_sent:
            self._resource_sent = True
            yield "stream_resource", self._stream_resource
        written = min(self._writer.n_frames, self._next_position)
        if index is None:
            stop, start = written, max(self._announced, written - 1)
        else:
            stop = min(int(index), written)
            start = self._announced
        if stop > start:
            yield "stream_datum", self._compose_datum(indices=StreamRange(start=start, stop=stop))
            self._announced = stop
