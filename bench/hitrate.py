"""``python -m bench.hitrate``: the same as ``bench/run --hitrate`` (bench/nodebench/hitrate.py)."""
import sys

from bench.nodebench.hitrate import main

if __name__ == "__main__":
    sys.exit(main())
