"""``labdct-live segment``: segment every frame of a folder into binary spot masks.

Methods are registered in :data:`METHODS` by :func:`register_method`; a method builds, from
the parsed arguments and the beam-stop mask, a function that turns a
:class:`~labdct_live.io.frames.FrameStack` into
:class:`~labdct_live.segmentation.routine.FrameResult` s (in any
order). ``routine`` is the standard routine; ``dl`` the U-Net and one threshold.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labdct_live.cli import CLIError

if TYPE_CHECKING:
    from labdct_live.io.frames import FrameStack
    from labdct_live.segmentation.routine import FrameResult

ORDER = 30

#: A segmenter turns a frame stack into per-frame results (in any order).
Segmenter = Callable[["FrameStack"], Iterator["FrameResult"]]


@dataclass(frozen=True)
class Method:
    """A segmentation method offered by ``--method``."""

    name: str
    help: str
    build: Callable[[argparse.Namespace, np.ndarray | None], tuple[Segmenter, dict]]


#: Registered methods, by name.
METHODS: dict[str, Method] = {}


def register_method(name: str, help: str):
    """Decorator registering ``build(args, exclude) -> (segmenter, settings)`` as a method.

    ``settings`` is a JSON-able description written to ``segmentation.json``.
    """
    def decorate(build):
        METHODS[name] = Method(name, help, build)
        return build
    return decorate


@register_method("routine", "the standard routine (rolling median, LoG, per-spot threshold)")
def _build_routine(args: argparse.Namespace, exclude: np.ndarray | None):
    from labdct_live.segmentation.routine import RoutineParams, iter_standard_routine

    params = RoutineParams.preset(args.preset)
    if args.params:
        try:
            loaded = json.loads(Path(args.params).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(
                f"--params {args.params}: cannot read a JSON parameter file ({exc})") from None
        loaded = loaded.get("params", loaded)
        unknown = set(loaded) - set(params.to_dict())
        if unknown:
            raise CLIError(f"--params {args.params}: unknown parameter(s) {sorted(unknown)}")
        params = params.with_(**loaded)
    overrides = {k: getattr(args, k) for k in ("window", "background", "sigma", "percent",
                                               "min_size") if getattr(args, k) is not None}
    params = params.with_(**overrides)
    circular = not args.no_wrap

    def segment(stack):
        return iter_standard_routine(iter(stack), params, exclude, circular)

    return segment, {"params": params.to_dict(), "circular": circular}


#: Range of the U-Net's output (a sigmoid): a threshold must lie in [0, 1) to select anything
#: but everything (below 0) or nothing (1 and above).
DL_OUTPUT_RANGE = (0.0, 1.0)


def _check_threshold(threshold: float | None) -> None:
    low, high = DL_OUTPUT_RANGE
    if threshold is not None and not low <= threshold < high:
        raise CLIError(f"--threshold {threshold:g} is outside the U-Net's output range "
                       f"[{low:g}, {high:g}): give {low:g} <= T < {high:g} (default: the "
                       "model's calibrated threshold)")


def _model_identity(model: str | None, denoiser) -> tuple[str, str]:
    """``(name, sha256 of the weight file)`` of the model ``segment --method dl`` runs."""
    from labdct_live.models import DEFAULT_MODEL, pretrained_path
    from labdct_live.models.checkpoint import file_sha256

    path = Path(model) if model else pretrained_path(DEFAULT_MODEL)
    sha256 = denoiser.metadata.get("sha256") or file_sha256(path)
    if model is None:
        return DEFAULT_MODEL, sha256  # the shipped model is named after its architecture
    architecture = denoiser.architecture or {}
    return f"{path.name} ({architecture.get('name', 'unknown architecture')})", sha256


@register_method("dl", "U-Net denoising, then one threshold (needs the trained U-Net)")
def _build_dl(args: argparse.Namespace, exclude: np.ndarray | None):
    from labdct_live.methods import DLMethod
    from labdct_live.segmentation.routine import FrameResult
    from labdct_live.segmentation.spots import label_spots, spot_table

    _check_threshold(args.threshold)
    try:
        # the model's own inference settings (an adapted model's static background, zinger
        # rejection, min size) apply unless options override them
        method = DLMethod(args.model, args.threshold, min_size=args.dl_min_size,
                          exclude=exclude, threads=args.threads)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CLIError(f"--method dl: {exc}") from exc
    denoiser = method.denoiser
    threshold, min_size = method.threshold, method.min_size

    def segment(stack):
        for index, frame in enumerate(stack):
            mask, denoised = method.segment_frame(frame)
            labels, _ = label_spots(mask)
            yield FrameResult(index, mask, labels, spot_table(labels, denoised), denoised)

    name, sha256 = _model_identity(args.model, denoiser)
    return segment, {"model": str(args.model or "shipped"), "threshold": float(threshold),
                     "min_size": min_size, "model_name": name,
                     "model_hash": sha256, "static": method.static is not None,
                     "zinger_threshold": method.zinger_threshold, "grow": method.grow,
                     "min_contrast": method.min_contrast}


def _resolve_input(input_dir: Path) -> tuple[Path, np.ndarray | None, str]:
    """Frame folder and beam-stop mask; a simulated scan folder brings its own beam stop."""
    if (input_dir / "scan.json").is_file() and (input_dir / "frames").is_dir():
        from labdct_live.simulation.scanfolder import SimulatedScan

        geometry = SimulatedScan.open(input_dir).geometry
        return input_dir / "frames", geometry.beamstop_mask(), "scan.json"
    return input_dir, None, "none"


#: ``--beamstop`` value meaning "no beam stop".
#: What ``--beamstop`` takes for "no beam stop" (a Geometry's is its NO_BEAMSTOP range).
NO_BEAMSTOP_OPTION = "none"


def parse_beamstop(text: str) -> tuple[int, int, int, int] | str:
    """``--beamstop`` value: ``ROW0,ROW1,COL0,COL1`` (inclusive pixels) or ``none``.

    One argument, so that the option can never take the positional folders after it.

    Raises
    ------
    argparse.ArgumentTypeError
        For anything else.
    """
    if text.strip().lower() == NO_BEAMSTOP_OPTION:
        return NO_BEAMSTOP_OPTION
    parts = text.replace(",", " ").split()
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"expected ROW0,ROW1,COL0,COL1 (four integers in one argument, e.g. "
            f"--beamstop 544,1496,526,1487) or 'none', got {text!r}")
    return values  # type: ignore[return-value]


def _beamstop_from_args(value: tuple[int, int, int, int] | str | None, shape: tuple[int, int],
                        default: np.ndarray | None) -> np.ndarray | None:
    if value is None:
        return default
    if value == NO_BEAMSTOP_OPTION:
        return None
    r0, r1, c0, c1 = value
    if not (0 <= r0 <= r1 < shape[0] and 0 <= c0 <= c1 < shape[1]):
        raise CLIError(f"--beamstop {r0},{r1},{c0},{c1} is outside the {shape[0]}x{shape[1]} "
                       "frames (rows and columns count from 0, both ends included)")
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask


def _spot_rows(result: FrameResult, frame: np.ndarray, exclude: np.ndarray | None,
               name: str):
    """The frame's rows of ``spots.csv``: the spot table with the SNR on the raw frame, as the
    live processor writes it to the catalog, and the frame's file name after ``frame``."""
    from labdct_live.segmentation.snr import spot_snr
    from labdct_live.segmentation.spot_schema import conform_spots

    snr = spot_snr(frame, result.labels, exclude=exclude)[["label", "snr", "visible"]]
    spots = conform_spots(result.spots.merge(snr, on="label", how="left"), frame=result.index)
    spots.insert(1, "name", name)
    return spots


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import tifffile
    from tqdm.auto import tqdm

    from labdct_live import __version__
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.io.output import AtomicOutputDir
    from labdct_live.io.tiff import tiff_layout_tags, write_mask_tiff

    input_dir, exclude, beamstop_source = _resolve_input(Path(args.input_dir))
    out = Path(args.output_dir)
    # Checked before any work: OUTPUT_DIR must not be, hold or lie in an input.
    output = AtomicOutputDir(out, overwrite=args.overwrite,
                             inputs=[args.input_dir, input_dir, args.params, args.model])
    stack = open_frame_folder(input_dir)
    if args.beamstop is not None:
        beamstop_source = "--beamstop"
    if args.instrument:
        from labdct_live.cli._instrument import instrument_from_args

        instrument = instrument_from_args(args, shape=stack.shape, n_frames=len(stack))
        if args.beamstop is None and instrument.beamstop is not None:
            exclude, beamstop_source = instrument.beamstop_mask(), f"--instrument {args.instrument}"
    exclude = _beamstop_from_args(args.beamstop, stack.shape, exclude)
    if exclude is not None and exclude.shape != stack.shape:
        raise CLIError(f"the beam-stop mask ({exclude.shape}) does not fit the "
                       f"{stack.shape} frames; pass --beamstop")
    segment, settings = METHODS[args.method].build(args, exclude)

    locations = stack.locations
    names = stack.names
    tables, seen = [], set()
    with output as tmp:
        stacks = {f: tifffile.memmap(tmp / f.name, shape=(n,) + stack.shape, dtype=np.uint8,
                                     photometric="minisblack",  # 3 frames are not RGB
                                     **tiff_layout_tags(f))
                  for f, n, is_stack in zip(stack.files, stack.frames_per_file, stack.is_stack)
                  if is_stack}
        with tqdm(total=len(stack), desc=f"segment ({args.method})", unit="frame") as bar:
            for result in segment(stack):
                path, page = locations[result.index]
                if page is None:
                    write_mask_tiff(tmp / path.name, result.mask, like=path)
                else:
                    stacks[path][page] = np.where(result.mask > 0, 255, 0)
                tables.append(_spot_rows(result, stack[result.index], exclude,
                                         names[result.index]))
                seen.add(result.index)
                bar.update()
        if len(seen) != len(stack):  # a method must account for every frame exactly once
            raise RuntimeError(f"method {args.method!r} returned {len(seen)} distinct frames "
                               f"of {len(stack)}; no output written")
        for memmap in stacks.values():
            memmap.flush()
        del stacks
        spots = pd.concat(tables, ignore_index=True).sort_values(["frame", "label"],
                                                                 kind="stable")
        spots.to_csv(tmp / "spots.csv", index=False)
        (tmp / "segmentation.json").write_text(json.dumps({
            "method": args.method, **settings, "input": str(input_dir.resolve()),
            "n_frames": len(stack), "frame_shape": list(stack.shape),
            "beamstop": beamstop_source, "labdct_live_version": __version__,
        }, indent=2))
    print(f"segmented {len(stack)} frames of {input_dir} ({len(spots)} spots) into {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment a folder of frames into binary spot masks",
        description="Segment every frame of INPUT_DIR (TIFF files of any size and pixel type; a "
                    "simulated scan folder also works and brings its beam stop). Writes one "
                    "binary TIFF (0/255) per input file, same names, plus spots.csv (one row "
                    "per spot) and segmentation.json (settings) into OUTPUT_DIR, which appears "
                    "only when complete.")
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder of frames (omega order)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder (created)")
    p.add_argument("--method", choices=sorted(METHODS), default="routine",
                   help="; ".join(f"{m.name}: {m.help}" for m in METHODS.values()))
    p.add_argument("--beamstop", type=parse_beamstop, metavar="R0,R1,C0,C1|none",
                   help="beam-stop rectangle as ONE argument: rows R0..R1 and columns C0..C1, "
                        "inclusive, comma-separated (e.g. 544,1496,526,1487), or 'none' "
                        "(default: from scan.json for a simulated scan, else none)")
    from labdct_live.cli._instrument import add_instrument_option

    add_instrument_option(p)  # its beam stop, unless --beamstop is given
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT_DIR if it is an earlier output of labdct-live (it holds "
                        "the .labdct-live-output marker); other folders are never replaced")
    d = p.add_argument_group("dl options")
    d.add_argument("--model", default=None,
                   help="checkpoint file (default: the model shipped with the package)")
    d.add_argument("--threshold", type=float, default=None,
                   help="threshold of the denoised image, 0 <= T < 1 (the U-Net's sigmoid "
                        "output; default: the model's calibrated one)")
    d.add_argument("--dl-min-size", type=int, default=None,
                   help="minimum spot size, pixels (default: the live plugin's, "
                        "labdct_live.models.inference.DEFAULT_MIN_SIZE)")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = p.add_argument_group("routine options")
    g.add_argument("--preset", choices=("public-code", "paper", "older"), default="public-code",
                   help="starting parameters: the public code's (= paper, default) or the "
                        "older variant (sigma 0.5, min size 2)")
    g.add_argument("--params", metavar="JSON",
                   help="parameters from a file, e.g. the output of 'labdct-live tune'")
    g.add_argument("--window", type=int, help="rolling-median window, frames (odd)")
    g.add_argument("--background", type=float, help="constant background value, counts")
    g.add_argument("--sigma", type=float, help="Gaussian SD of the LoG, pixels")
    g.add_argument("--percent", type=float, help="per-spot threshold, fraction of its max")
    g.add_argument("--min-size", type=int, help="minimum spot size, pixels")
    g.add_argument("--no-wrap", action="store_true",
                   help="the scan is not a full 360°: do not wrap the rolling window")
    p.set_defaults(func=run)
