"""Seconds per full-resolution 2032² frame for each network and runtime, on N CPU threads.

    python benchmarks/bench_inference.py [--size 2032] [--threads 2] [--repeat 3]
        [--models resnet34_unet,unet,compact_s4,compact_s2,compact_tiny]
        [--runtimes eager,channels_last,engine,engine_bf16,compile,onnxruntime] [--json OUT]

Runtimes:

* ``eager``: ``model.eval()`` on a float32 NCHW tensor padded to the stride, inference mode.
* ``channels_last``: the same with channels-last memory layout.
* ``engine``: :class:`labdct_live.models.Denoiser` end to end on a uint16 frame: per-frame
  normalisation, padding, batch norms folded into convs, channels last, float32, crop.
* ``engine_bf16``: the engine with bfloat16 autocast.
* ``compile``: the engine with ``torch.compile`` (compilation time printed separately).
* ``onnxruntime``: the BN-folded network exported to ONNX, run by ONNX Runtime's CPU provider
  (only when ``onnxruntime`` and ``onnx`` are installed), on the normalised padded frame.

Weights are random (speed does not depend on them). Times are the minimum over ``--repeat``
runs after one warm-up run (the machine may be shared; the minimum is the least disturbed).
Ratios are to the ResNet34 U-Net (the paper's network) in the same runtime and run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
import warnings

import numpy as np
import torch

ALL_MODELS = ["resnet34_unet", "unet", "compact_s4", "compact_s2", "compact_tiny"]
ALL_RUNTIMES = ["eager", "channels_last", "engine", "engine_bf16", "compile", "onnxruntime"]


def test_frame(size: int, seed: int = 0) -> np.ndarray:
    """A uint16 frame: Poisson background of ~600 counts and a few hundred Gaussian spots."""
    rng = np.random.default_rng(seed)
    frame = rng.poisson(600, (size, size)).astype(np.float64)
    for r, c in rng.uniform(8, size - 8, (300, 2)).astype(int):
        frame[r - 3 : r + 4, c - 3 : c + 4] += rng.uniform(50, 3000)
    return np.clip(frame, 0, 65535).astype(np.uint16)


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def padded_input(frame: np.ndarray, stride: int) -> np.ndarray:
    from labdct_live.training.synthesis import normalize_frame

    height, width = frame.shape
    pad_h, pad_w = (-height) % stride, (-width) % stride
    return np.pad(normalize_frame(frame), ((0, pad_h), (0, pad_w)), mode="symmetric")[None, None]


def time_runtime(name: str, runtime: str, frame: np.ndarray, repeat: int, threads: int) -> dict:
    from labdct_live.models import Denoiser, get_model

    torch.manual_seed(0)
    model = get_model(name).eval()
    x = torch.from_numpy(padded_input(frame, model.input_multiple))
    info: dict = {}
    if runtime in ("eager", "channels_last"):
        if runtime == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                model(x)
    elif runtime.startswith("engine") or runtime == "compile":
        precision = "bfloat16" if runtime == "engine_bf16" else "float32"
        denoiser = Denoiser(model, device="cpu", precision=precision,
                            compile=runtime == "compile")
        if runtime == "compile":
            start = time.perf_counter()
            denoiser(frame)
            info["compile_seconds"] = time.perf_counter() - start

        def run():
            denoiser(frame)
    elif runtime == "onnxruntime":
        import onnxruntime

        network = Denoiser(model, device="cpu")._network  # the BN-folded module
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, x[..., :64, :64].contiguous(), buffer, dynamo=False,
                              input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                               providers=["CPUExecutionProvider"])
        array = x.contiguous().numpy()

        def run():
            session.run(None, {"x": array})
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    info["seconds"] = best_time(run, repeat)
    return info


def available(runtime: str) -> bool:
    if runtime != "onnxruntime":
        return True
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2032, help="frame side, pixels")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (min taken)")
    parser.add_argument("--resnet-repeat", type=int, default=1,
                        help="timed runs for resnet34_unet (about a minute each on 2 cores)")
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument("--runtimes", default=",".join(ALL_RUNTIMES))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    frame = test_frame(args.size)
    models = args.models.split(",")
    runtimes = []
    for runtime in args.runtimes.split(","):
        if available(runtime):
            runtimes.append(runtime)
        else:
            print(f"skipping {runtime}: onnxruntime / onnx not installed")
    print(f"torch {torch.__version__}, {args.threads} threads, frame {args.size}x{args.size}")
    results: dict[tuple[str, str], dict] = {}
    for name in models:
        for runtime in runtimes:
            repeat = args.resnet_repeat if name == "resnet34_unet" else args.repeat
            try:
                info = time_runtime(name, runtime, frame, repeat, args.threads)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"{name:14s} {runtime:14s} failed: {type(exc).__name__}: {exc}")
                continue
            results[(name, runtime)] = info
            extra = (f"  (compile {info['compile_seconds']:.0f} s)"
                     if "compile_seconds" in info else "")
            print(f"{name:14s} {runtime:14s} {info['seconds']:8.3f} s/frame{extra}", flush=True)

    print("\nseconds per frame (speed-up vs resnet34_unet in the same runtime)")
    print(f"{'model':14s}" + "".join(f"{r:>22s}" for r in runtimes))
    for name in models:
        cells = []
        for runtime in runtimes:
            info = results.get((name, runtime))
            if info is None:
                cells.append(f"{'-':>22s}")
                continue
            reference = results.get(("resnet34_unet", runtime))
            ratio = reference["seconds"] / info["seconds"] if reference else math.nan
            cells.append(f"{info['seconds']:11.3f} ({ratio:6.1f}x)")
        print(f"{name:14s}" + "".join(cells))
    engine = {name: results[(name, "engine")]["seconds"] for name in models
              if (name, "engine") in results}
    if engine:
        print("\n181-frame scan with the engine (float32):",
              ", ".join(f"{n} {181 * s:.0f} s" for n, s in engine.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": args.threads, "size": args.size,
                       "results": [{"model": m, "runtime": r, **v}
                                   for (m, r), v in results.items()]},
                      fh, indent=1)


if __name__ == "__main__":
    main()
