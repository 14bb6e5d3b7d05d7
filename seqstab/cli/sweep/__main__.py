import sys

from seqstab.cli.sweep.main import main

sys.exit(main())
