import sys

from llmasr.cli import entry

sys.exit(entry())
