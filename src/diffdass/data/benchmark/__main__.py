"""``python -m diffdass.data.benchmark ROOT [--height 256 --width 512] [--preview out.png]``."""

from diffdass.data.benchmark.writer import _main

if __name__ == "__main__":  # generation spawns worker processes that re-import this module
    _main()
