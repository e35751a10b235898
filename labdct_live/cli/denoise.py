"""``labdct-live denoise``: write the U-Net's clean spot image of every frame of a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ORDER = 35


def run(args: argparse.Namespace) -> int:
    import tifffile
    from tqdm.auto import tqdm

    from labdct_live import __version__
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.io.output import AtomicOutputDir
    from labdct_live.io.tiff import tiff_layout_tags, write_tiff_atomic
    from labdct_live.models import Denoiser

    input_dir, out = Path(args.input_dir), Path(args.output_dir)
    # Checked before any work: OUTPUT_DIR must not be, hold or lie in an input.
    output = AtomicOutputDir(out, overwrite=args.overwrite, inputs=[input_dir, args.model])
    stack = open_frame_folder(input_dir)
    denoiser = Denoiser(args.model, tile=args.tile, overlap=args.overlap,
                        batch_size=args.batch_size, threads=args.threads, device=args.device,
                        precision=args.precision, compile=args.compile)
    dtype = np.uint8 if args.format == "uint8" else np.float32

    def encode(image: np.ndarray) -> np.ndarray:
        if dtype is np.uint8:
            return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        return image

    with output as tmp:
        stacks = {f: tifffile.memmap(tmp / f.name, shape=(n,) + stack.shape, dtype=dtype,
                                     photometric="minisblack",  # 3 frames are not RGB
                                     **tiff_layout_tags(f))
                  for f, n, is_stack in zip(stack.files, stack.frames_per_file, stack.is_stack)
                  if is_stack}
        with tqdm(total=len(stack), desc="denoise", unit="frame") as bar:
            for (path, page), frame in zip(stack.locations, stack):
                image = encode(denoiser(frame))
                if page is None:
                    write_tiff_atomic(tmp / path.name, image, **tiff_layout_tags(path))
                else:
                    stacks[path][page] = image
                bar.update()
        for memmap in stacks.values():
            memmap.flush()
        del stacks
        (tmp / "denoise.json").write_text(json.dumps({
            "model": "shipped" if args.model is None else str(args.model),
            "architecture": denoiser.architecture,
            "model_hash": denoiser.metadata.get("sha256", ""),  # sha256 of the weight file
            "format": args.format, "tile": args.tile, "overlap": args.overlap,
            "precision": args.precision, "device": str(denoiser.device),
            "normalization": "labdct_live.training.synthesis.normalize_frame",
            "input": str(input_dir.resolve()), "n_frames": len(stack),
            "frame_shape": list(stack.shape), "labdct_live_version": __version__,
        }, indent=2))
    print(f"denoised {len(stack)} frames of {input_dir} into {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "denoise", help="write the U-Net's clean spot images of a folder of frames",
        description="Denoise every frame of INPUT_DIR (TIFF files of any size and pixel type) "
                    "with the U-Net and write the clean spot images, same file names, into "
                    "OUTPUT_DIR (which appears only when complete): float32 in [0, 1], or "
                    "uint8 0..255 with --format uint8.")
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder of frames")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder (created)")
    p.add_argument("--model", metavar="CHECKPOINT",
                   help="a checkpoint (e.g. RUN/model.pt of labdct-live train); default: the "
                        "shipped model")
    p.add_argument("--format", choices=("float32", "uint8"), default="float32",
                   help="output pixel type (default float32)")
    p.add_argument("--tile", type=int, help="tile side, px (default: whole frames)")
    p.add_argument("--overlap", type=int,
                   help="tile overlap, px (default 256, at most half a tile)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per pass (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="network precision (bfloat16: ~2x faster on recent CPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (slow first frame, faster after)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT_DIR if it is an earlier output of labdct-live (it holds "
                        "the .labdct-live-output marker); other folders are never replaced")
    p.set_defaults(func=run)
