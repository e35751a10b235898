"""Bluesky callbacks: live processing, exposure monitor, end-of-scan hook, raw-run writer.

See :mod:`labdct_live.callbacks.live` (the processor), :mod:`~labdct_live.callbacks.monitor`,
:mod:`~labdct_live.callbacks.end_of_scan` and :mod:`~labdct_live.callbacks.raw_writer`.
"""

__all__: list[str] = []  # the callbacks live in the submodules
