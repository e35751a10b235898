"""Run time and peak memory of the grain-map comparison for a 300³ pair with ~500 grains.

Builds a Voronoi reference (cylindrical sample), a damaged reconstruction (shifted by a few
voxels, 5 % of the grains removed, 2 % split, boundaries roughened, a 0.3° orientation error),
writes both as GrainMapper3D files, then runs read + compare + report in a fresh process and
prints wall time per step and that process's peak resident memory.

    python benchmarks/bench_compare.py [--size 300] [--grains 500]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from labdct_live.grains import read_gm3d
from labdct_live.grains.compare import compare_grainmaps, write_report
ref = read_gm3d(sys.argv[1]); rec = read_gm3d(sys.argv[2])
t1 = time.perf_counter()
comp = compare_grainmaps(ref, rec)
t2 = time.perf_counter()
write_report([comp], sys.argv[3])
t3 = time.perf_counter()
print(json.dumps({"read_s": t1 - t0, "compare_s": t2 - t1, "report_s": t3 - t2,
                  "counts": comp.counts(),
                  "translation_vox": (comp.registration.translation_mm / ref.spacing).tolist()}))
"""


def voronoi_cylinder(size: int, n_grains: int, seed: int) -> np.ndarray:
    """Voronoi grain ids of n_grains seeds in a vertical cylinder filling the box."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    radius = size / 2 - 8
    pts = rng.integers(4, size - 4, (4 * n_grains, 3))
    inside = (pts[:, 1] - size / 2 + 0.5) ** 2 + (pts[:, 2] - size / 2 + 0.5) ** 2 < radius**2
    seeds = np.zeros(shape, bool)
    seeds[tuple(pts[inside][:n_grains].T)] = True
    nearest = ndimage.distance_transform_edt(~seeds, return_distances=False,
                                             return_indices=True)
    labels, _ = ndimage.label(seeds)
    ids = labels[tuple(nearest)].astype(np.int32)
    del nearest
    y, x = np.ogrid[:size, :size]
    outside = (y - size / 2 + 0.5) ** 2 + (x - size / 2 + 0.5) ** 2 > radius**2
    ids[:, outside] = 0
    ids[:4] = 0
    ids[-4:] = 0
    present = np.unique(ids[ids > 0])
    lut = np.zeros(ids.max() + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[ids]


def damage(ids: np.ndarray, orientations: np.ndarray, seed: int):
    """A plausible reconstruction: missing, split and misplaced-boundary grains, a shift."""
    rng = np.random.default_rng(seed)
    n = int(ids.max())
    rec = ids.copy()
    rec_orient = np.concatenate([orientations, orientations[: n // 50 + 1]])
    # Roughen boundaries: grains take a one-voxel layer from their neighbours at random.
    grown = ndimage.grey_dilation(rec, size=(3, 3, 3))
    flip = (rng.random(rec.shape) < 0.3) & (rec > 0) & (grown > 0)
    rec[flip] = grown[flip]
    del grown, flip
    removed = rng.choice(np.arange(1, n + 1), n // 20, replace=False)
    rec[np.isin(rec, removed)] = 0
    for j, g in enumerate(rng.choice(np.setdiff1d(np.arange(1, n + 1), removed), n // 50,
                                     replace=False)):
        zz = np.nonzero(rec == g)[0]
        part = (rec == g) & (np.arange(rec.shape[0])[:, None, None] > np.median(zz))
        rec[part] = n + 1 + j
        rec_orient[n + 1 + j] = orientations[g]
    noise = Rotation.from_rotvec(rng.normal(size=(len(rec_orient), 3)) * np.radians(0.3)
                                 / np.sqrt(3))
    rec_orient = noise.as_matrix() @ rec_orient
    return np.roll(rec, (3, -2, 4), axis=(0, 1, 2)), rec_orient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--grains", type=int, default=500)
    args = parser.parse_args()

    from labdct_live.grains.formats.gm3d import write_gm3d
    from labdct_live.grains.grainmap import GrainMap

    t0 = time.perf_counter()
    ids = voronoi_cylinder(args.size, args.grains, seed=1)
    n = int(ids.max())
    orient = Rotation.random(n + 1, random_state=2).as_matrix()
    rec_ids, rec_orient = damage(ids, orient, seed=3)
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_gm3d(tmp / "ref.h5", GrainMap.from_grain_ids(ids, 0.0025, orient))
        t_write = time.perf_counter() - t0
        write_gm3d(tmp / "rec.h5", GrainMap.from_grain_ids(rec_ids, 0.0025, rec_orient))
        del ids, rec_ids
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "ref.h5"),
                                str(tmp / "rec.h5"), str(tmp / "report")],
                               capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"volume {args.size}³ voxels, {n} reference grains "
          f"(build {t_build:.1f} s, write_gm3d {t_write:.1f} s per map)")
    print(f"counts: {result['counts']}")
    print(f"registration found {np.round(result['translation_vox'], 3).tolist()} voxels "
          "(applied: [3, -2, 4])")
    print(f"read both maps  {result['read_s']:6.1f} s")
    print(f"compare         {result['compare_s']:6.1f} s   (target <= 60 s)")
    print(f"report          {result['report_s']:6.1f} s")
    print(f"child process   {wall:6.1f} s wall, peak RSS {peak_mb:.0f} MB (target <= 4096 MB)")


if __name__ == "__main__":
    main()
