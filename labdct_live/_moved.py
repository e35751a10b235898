"""Old import paths of modules that moved into subpackages, kept working for one release.

``import labdct_live.geometry`` still works and gives :mod:`labdct_live.simulation.geometry`
itself (the same module object, so attributes set on one are seen through the other), with a
:class:`DeprecationWarning` naming the new path. A module that was split in parts
(``labdct_live.segment``, ...) is rebuilt from its parts' public names. New code imports the
new paths; this table is the one place that knows the old ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "SPLIT", "install"]

#: Old module path -> the module it now is.
MOVED: dict[str, str] = {
    "labdct_live.names": "labdct_live.io.names",
    "labdct_live.wire": "labdct_live.io.wire",
    "labdct_live.spot_schema": "labdct_live.segmentation.spot_schema",
    "labdct_live.normalization": "labdct_live.segmentation.normalization",
    "labdct_live.snr": "labdct_live.segmentation.snr",
    "labdct_live.metrics": "labdct_live.segmentation.metrics",
    "labdct_live.tune": "labdct_live.segmentation.tune",
    "labdct_live.report": "labdct_live.segmentation.report",
    "labdct_live.geometry": "labdct_live.simulation.geometry",
    "labdct_live.crystal": "labdct_live.simulation.crystal",
    "labdct_live.spectrum": "labdct_live.simulation.spectrum",
    "labdct_live.microstructure": "labdct_live.simulation.microstructure",
    "labdct_live.simulate": "labdct_live.simulation.forward",
    "labdct_live.presets": "labdct_live.simulation.presets",
    "labdct_live.scanfiles": "labdct_live.simulation.scanfolder",
    "labdct_live.synthesis": "labdct_live.training.synthesis",
    "labdct_live.processing": "labdct_live.methods",
    "labdct_live.devices": "labdct_live.acquisition.detector",
    "labdct_live.plans": "labdct_live.acquisition.plans",
    "labdct_live.processed": "labdct_live.catalog.processed",
    "labdct_live.session": "labdct_live.live.session",
    "labdct_live.replay": "labdct_live.live.replay",
    "labdct_live.spool_import": "labdct_live.live.spool_import",
}

#: Old module path of a split module -> {public name: the module now defining it}.
SPLIT: dict[str, dict[str, str]] = {
    "labdct_live.grainmap": {
        "ALUMINIUM": "labdct_live.grains.phase",
        "GrainMap": "labdct_live.grains.grainmap",
        "GrainMapError": "labdct_live.grains.phase",
        "GrainMapFormatError": "labdct_live.grains.formats.gm3d",
        "Phase": "labdct_live.grains.phase",
        "bunge_to_matrix": "labdct_live.grains.orientations",
        "matrix_to_bunge": "labdct_live.grains.orientations",
        "read_dream3d": "labdct_live.grains.formats.dream3d",
        "read_gm3d": "labdct_live.grains.formats.gm3d",
        "read_grainmap": "labdct_live.grains.formats.registry",
        "read_grainrecon": "labdct_live.grains.formats.grainrecon",
        "write_gm3d": "labdct_live.grains.formats.gm3d",
    },
    "labdct_live.compare": {
        "CLASS_FALSE_NEGATIVE": "labdct_live.grains.compare.pairing",
        "CLASS_FALSE_POSITIVE": "labdct_live.grains.compare.pairing",
        "CLASS_ONE_TO_MULTI": "labdct_live.grains.compare.pairing",
        "CLASS_ONE_TO_ONE": "labdct_live.grains.compare.pairing",
        "Comparison": "labdct_live.grains.compare.comparison",
        "EmptyGrainMapError": "labdct_live.grains.compare.registration",
        "NonCubicPhaseError": "labdct_live.grains.compare.registration",
        "Registration": "labdct_live.grains.compare.registration",
        "VoxelSizeMismatchError": "labdct_live.grains.compare.registration",
        "boundary_mask": "labdct_live.grains.compare.registration",
        "compare_grainmaps": "labdct_live.grains.compare.comparison",
        "delta_gb": "labdct_live.grains.compare.boundaries",
        "delta_gb_ratio": "labdct_live.grains.compare.comparison",
        "deviation_map": "labdct_live.grains.compare.boundaries",
        "pair_grains": "labdct_live.grains.compare.pairing",
        "register": "labdct_live.grains.compare.registration",
        "resample_onto": "labdct_live.grains.compare.registration",
        "table2": "labdct_live.grains.compare.report",
        "write_report": "labdct_live.grains.compare.report",
    },
    "labdct_live.segment": {
        "RoutineParams": "labdct_live.segmentation.routine",
        "RoutineParameterError": "labdct_live.segmentation.rolling_median",
        "StackTooShortError": "labdct_live.segmentation.rolling_median",
        "FrameResult": "labdct_live.segmentation.routine",
        "RollingMedianSubtractor": "labdct_live.segmentation.rolling_median",
        "StandardRoutine": "labdct_live.segmentation.routine",
        "subtract_rolling_median": "labdct_live.segmentation.rolling_median",
        "log_response": "labdct_live.segmentation.routine",
        "threshold_response": "labdct_live.segmentation.routine",
        "segment_corrected": "labdct_live.segmentation.routine",
        "iter_standard_routine": "labdct_live.segmentation.routine",
        "standard_routine": "labdct_live.segmentation.routine",
        "threshold_segment": "labdct_live.segmentation.threshold",
        "remove_small_components": "labdct_live.segmentation.threshold",
        "label_spots": "labdct_live.segmentation.spots",
        "as_labels": "labdct_live.segmentation.spots",
        "spot_table": "labdct_live.segmentation.spots",
        "SPOT_TABLE_COLUMNS": "labdct_live.segmentation.spot_schema",
        "FOUR_CONNECTIVITY": "labdct_live.segmentation.threshold",
    },
    "labdct_live.backgrounds": {
        "BackgroundError": "labdct_live.simulation.background",
        "ProceduralBackground": "labdct_live.simulation.background",
        "ArrayBackground": "labdct_live.simulation.background",
        "procedural_background": "labdct_live.simulation.background",
        "background_for_geometry": "labdct_live.simulation.background",
        "beam_center_pixel": "labdct_live.simulation.background",
        "spot_mask": "labdct_live.training.backgrounds",
        "remove_spots": "labdct_live.training.backgrounds",
        "extract_backgrounds": "labdct_live.training.backgrounds",
    },
    "labdct_live.datasets": {
        "DatasetError": "labdct_live.training.cache",
        "Acquisition": "labdct_live.training.acquisitions",
        "paper_acquisitions": "labdct_live.training.acquisitions",
        "varied_acquisitions": "labdct_live.training.acquisitions",
        "CachedProjection": "labdct_live.training.cache",
        "ProjectionCache": "labdct_live.training.cache",
        "build_projection_cache": "labdct_live.training.cache",
        "write_projection_cache": "labdct_live.training.cache",
        "split_projections": "labdct_live.training.torchdata",
        "CropSettings": "labdct_live.training.crops",
        "generate_crops": "labdct_live.training.crops",
        "SyntheticPairStream": "labdct_live.training.torchdata",
        "write_pair_dataset": "labdct_live.training.torchdata",
        "PairDataset": "labdct_live.training.torchdata",
    },
    "labdct_live.remote": {
        "CURVE_DIR_ENV": "labdct_live.live.addresses",
        "DEFAULT_IN": "labdct_live.live.addresses",
        "DEFAULT_OUT": "labdct_live.live.addresses",
        "CurveClient": "labdct_live.live.addresses",
        "CurveServer": "labdct_live.live.addresses",
        "InsecureBindError": "labdct_live.live.addresses",
        "Proxy": "labdct_live.live.remote",
        "Publisher": "labdct_live.live.remote",
        "RemoteDispatcher": "labdct_live.live.remote",
        "WireDecodeError": "labdct_live.io.wire",
        "endpoint": "labdct_live.live.addresses",
        "is_loopback": "labdct_live.live.addresses",
        "make_dispatcher": "labdct_live.live.remote",
        "make_proxy": "labdct_live.live.remote",
        "make_publisher": "labdct_live.live.remote",
        "pack": "labdct_live.io.wire",
        "unpack": "labdct_live.io.wire",
    },
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there (the old path will be removed)",
                  DeprecationWarning, stacklevel=3)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        old = spec.name
        if old in MOVED:
            _warn(old, MOVED[old])
            return importlib.import_module(MOVED[old])
        module = types.ModuleType(old, f"Moved: the parts of {old} (see labdct_live._moved).")
        names = SPLIT[old]
        for name, where in names.items():
            setattr(module, name, getattr(importlib.import_module(where), name))
        module.__all__ = list(names)
        _warn(old, ", ".join(sorted(set(names.values()))))
        return module

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in SPLIT:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def install() -> None:
    """Make the old paths importable (called once by ``labdct_live/__init__.py``)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
