"""``python -m bench.missrate``: the same as ``bench/run --missrate`` (bench/nodebench/missrate.py)."""
import sys

from bench.nodebench.missrate import main

if __name__ == "__main__":
    sys.exit(main())
