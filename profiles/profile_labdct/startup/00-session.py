"""labdct-live beamline session: RunEngine, catalog, TiledWriter, live processing, monitor.

Settings come from environment variables (defaults in brackets):
  LABDCT_WORKDIR      work folder: embedded catalog, raw files, exports, plots [~/labdct-live]
  LABDCT_CATALOG_URI  an existing tiled server; unset: start the embedded catalog
  TILED_API_KEY       its API key
  LABDCT_METHOD       auto | dl | routine [auto]
  LABDCT_TARGET_SNR   exposure monitor target [4]
  LABDCT_EXPORT       end-of-scan exports, comma-separated [grainrecon,gm3d]
  LABDCT_REFERENCE    reference grain map for the end-of-scan comparison [none]
  LABDCT_LIVE_MAP     update a grain map every K frames while scanning, 0 = off [0];
                      it also reconstructs at the end of each scan (binned 2x2)
"""

import atexit
import os
from pathlib import Path

from labdct_live.live.session import LiveSession

live_every = int(os.environ.get("LABDCT_LIVE_MAP", "0"))
if live_every:
    from labdct_live.callbacks.live_grainmap import LiveMapSettings

session = LiveSession(
    Path(os.environ.get("LABDCT_WORKDIR", "~/labdct-live")).expanduser(),
    catalog_uri=os.environ.get("LABDCT_CATALOG_URI"),
    api_key=os.environ.get("TILED_API_KEY"),
    method=os.environ.get("LABDCT_METHOD", "auto"),
    target_snr=float(os.environ.get("LABDCT_TARGET_SNR", "4")),
    export_formats=[f for f in os.environ.get("LABDCT_EXPORT", "grainrecon,gm3d").split(",") if f],
    reference=os.environ.get("LABDCT_REFERENCE") or None,
    report=print,
    live_map=LiveMapSettings(every=live_every, bin=2) if live_every else False,
    reconstruct=bool(live_every), reconstruct_bin=2,
).open()
atexit.register(session.close)

RE = session.RE          # the RunEngine
catalog = session.client  # tiled client: catalog[uid] raw runs, catalog["processed"][uid] results
monitor = session.monitor
live_map = session.live_grainmap  # None unless LABDCT_LIVE_MAP: live_map.latest() is the signal
print(f"labdct-live: catalog {session.catalog_uri}, method {session.method}, "
      f"work folder {session.workdir}")
