"""labdct-live beamline session: RunEngine, catalog, TiledWriter, live processing, monitor.

Settings come from environment variables (defaults in brackets):
  LABDCT_WORKDIR      work folder: embedded catalog, raw files, exports, plots [~/labdct-live]
  LABDCT_CATALOG_URI  an existing tiled server; unset: start the embedded catalog
  TILED_API_KEY       its API key
  LABDCT_METHOD       auto | dl | routine [auto]
  LABDCT_TARGET_SNR   exposure monitor target [4]
  LABDCT_EXPORT       end-of-scan exports, comma-separated [grainrecon,gm3d]
  LABDCT_REFERENCE    reference grain map for the end-of-scan comparison [none]
"""

import atexit
import os
from pathlib import Path

from labdct_live.live.session import LiveSession

session = LiveSession(
    Path(os.environ.get("LABDCT_WORKDIR", "~/labdct-live")).expanduser(),
    catalog_uri=os.environ.get("LABDCT_CATALOG_URI"),
    api_key=os.environ.get("TILED_API_KEY"),
    method=os.environ.get("LABDCT_METHOD", "auto"),
    target_snr=float(os.environ.get("LABDCT_TARGET_SNR", "4")),
    export_formats=[f for f in os.environ.get("LABDCT_EXPORT", "grainrecon,gm3d").split(",") if f],
    reference=os.environ.get("LABDCT_REFERENCE") or None,
    report=print,
).open()
atexit.register(session.close)

RE = session.RE          # the RunEngine
catalog = session.client  # tiled client: catalog[uid] raw runs, catalog["processed"][uid] results
monitor = session.monitor
print(f"labdct-live: catalog {session.catalog_uri}, method {session.method}, "
      f"work folder {session.workdir}")
