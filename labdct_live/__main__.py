import sys

from labdct_live.cli import main

sys.exit(main())
