"""``labdct-live export``: a segmented scan in a reconstruction-ready format.

The frames and the scan's metadata come from a *source*; each source is a function
``(args) -> (binary_frames, metadata, raw_frames)``. Today: a folder of masks (SOURCE, written
by ``labdct-live segment``) with ``--scan`` or ``--meta``. A catalog source
(``--from-catalog RAW_UID --catalog URI``) adds its options in :func:`register` and one branch
in :func:`load_source`; everything after it is shared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from labdct_live.cli import CLIError

ORDER = 40

#: ``--format`` choices (= labdct_live.export.registry.FORMATS, not imported so that --help stays
#: fast).
FORMAT_NAMES = ("grainrecon", "gm3d", "nexus")


def _read_json(path: Path, option: str) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(f"{option} {path}: cannot read a JSON file ({exc})") from None
    if not isinstance(content, dict):
        raise CLIError(f"{option} {path}: expected a JSON object (keys and values)")
    return content


def source_from_folder(args: argparse.Namespace) -> tuple[Any, dict, Any]:
    """Masks of SOURCE, metadata from --scan or --meta, provenance from segmentation.json."""
    from labdct_live.export.masks import open_mask_folder
    from labdct_live.export.metadata import metadata_from_scan

    if args.source is None:
        raise CLIError("give SOURCE, the folder of binary masks written by 'labdct-live segment'")
    source = Path(args.source)
    if args.scan:
        metadata = metadata_from_scan(args.scan)
    elif args.meta:
        metadata = _read_json(Path(args.meta), "--meta")
    else:
        raise CLIError("give the scan's metadata: --scan DIR (a simulated scan folder) or "
                       "--meta FILE.json (see docs/export.md)")
    segmentation = source / "segmentation.json"
    if metadata.get("processing") is None and segmentation.is_file():
        metadata["processing"] = _read_json(segmentation, "SOURCE")
    masks = open_mask_folder(source, metadata.get("frame_names"))
    if metadata.get("frame_names") is None:  # the masks keep the raw frames' names
        metadata["frame_names"] = masks.names
    raw = None
    if args.raw:
        from labdct_live.io.frames import open_frame_folder

        stack = open_frame_folder(args.raw)
        position = {name: k for k, name in enumerate(stack.names)}
        if set(position) != set(masks.names):
            raise CLIError(f"--raw {args.raw}: its frame names differ from SOURCE's; give the "
                           "folder of the frames that were segmented")
        raw = ((i, stack[position[name]]) for i, name in enumerate(masks.names))
    return masks, metadata, raw


def source_from_catalog(args: argparse.Namespace) -> tuple[Any, dict, Any]:
    """Masks and metadata of ``processed/<uid>`` in a tiled catalog."""
    from labdct_live.callbacks.end_of_scan import export_inputs
    from labdct_live.catalog.client import connect

    client = connect(args.catalog, args.api_key)
    if "processed" not in client or args.from_catalog not in client["processed"]:
        raise CLIError(f"no processed/{args.from_catalog} in {args.catalog}: process the run "
                       "live or with 'labdct-live replay' first")
    node = client["processed"][args.from_catalog]
    raw_uid = node.metadata["raw_uid"]
    start = dict(client[raw_uid].metadata["start"])
    frames, metadata = export_inputs(node, start)
    raw = None
    if args.format == "nexus" and args.with_raw:
        images = client[raw_uid]["primary"][start.get("image_key", "labdct_image")]
        raw = (np.asarray(images[i]) for i in range(images.shape[0]))
    return frames, metadata, raw


def load_source(args: argparse.Namespace) -> tuple[Any, dict, Any]:
    """``(binary_frames, metadata, raw_frames or None)`` from the chosen source."""
    if args.from_catalog:
        if args.source or args.scan or args.meta:
            raise CLIError("--from-catalog replaces SOURCE, --scan and --meta")
        if not args.catalog:
            raise CLIError("--from-catalog needs --catalog URI")
        return source_from_catalog(args)
    return source_from_folder(args)


def run(args: argparse.Namespace) -> int:
    from labdct_live.export.metadata import ExportMetadata
    from labdct_live.export.registry import export_scan
    from labdct_live.io.output import check_output_dir

    if args.raw and args.format != "nexus":
        raise CLIError("--raw is only used by --format nexus")
    # Before reading anything: --out must not be, hold or lie in an input (export_scan
    # checks the folder again, without knowing the inputs).
    check_output_dir(args.out, [args.source, args.scan, args.meta, args.raw],
                     overwrite=args.overwrite)
    frames, metadata, raw = load_source(args)
    metadata = ExportMetadata.from_dict(metadata)
    options = {"raw_frames": raw} if raw is not None else {}
    out = export_scan(frames, metadata, args.format, args.out, overwrite=args.overwrite,
                      **options)
    print(f"exported {metadata.n_frames} frames as {args.format} to {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write segmented frames in a reconstruction-ready format",
        description="Export the binary masks of a scan (SOURCE: the output folder of "
                    "'labdct-live segment', one TIFF per frame with the raw frames' names) for "
                    "reconstruction: grainrecon (proj0001.tif ... + omega.txt + "
                    "grainrecon.json), gm3d (GrainMapper3D-ready uint16 copy under the raw "
                    "names + gm3d_export.json) or nexus (scan.nxs, one HDF5 archive). The "
                    "geometry and omegas come from --scan or --meta; the processing provenance "
                    "from SOURCE/segmentation.json unless --meta has one. DIR appears only "
                    "when complete.")
    p.add_argument("source", metavar="SOURCE", nargs="?",
                   help="folder of binary masks (0/255 or 0/1 TIFFs), e.g. from "
                        "'labdct-live segment'")
    p.add_argument("--format", required=True, choices=FORMAT_NAMES, help="export format")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    meta = p.add_mutually_exclusive_group()
    meta.add_argument("--scan", metavar="DIR",
                      help="simulated scan folder whose scan.json gives geometry and omegas")
    meta.add_argument("--meta", metavar="FILE.json",
                      help="metadata file: geometry (Geometry.to_dict()), omegas, exposure, "
                           "sample, processing, frame_names (see docs/export.md)")
    p.add_argument("--raw", metavar="DIR",
                   help="nexus only: also archive the raw frames of this folder (same names "
                        "as SOURCE)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it is an earlier output of labdct-live (it holds the "
                        ".labdct-live-output marker); other folders are never replaced")
    c = p.add_argument_group("from a tiled catalog (instead of SOURCE)")
    c.add_argument("--from-catalog", metavar="UID",
                   help="export processed/<UID> (a raw run's uid, or a replay's node key)")
    c.add_argument("--catalog", metavar="URI", help="tiled server URI")
    c.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    c.add_argument("--with-raw", action="store_true",
                   help="nexus: also archive the raw frames from the catalog")
    p.set_defaults(func=run)
