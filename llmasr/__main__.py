import sys

from llmasr.cli import main

sys.exit(main())
