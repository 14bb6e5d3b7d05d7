import sys

from seqstab.train import main

sys.exit(main())
