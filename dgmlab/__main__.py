import sys

from dgmlab.cli import main

sys.exit(main())
