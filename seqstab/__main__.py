"""``python -m seqstab`` is the ``seqstab`` command: ``python -m seqstab fit ...``, ``python -m seqstab sweep ...``."""

import sys

from seqstab.cli.command import main

sys.exit(main())
