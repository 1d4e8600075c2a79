#!/usr/bin/env python3
"""Run N p2pfed peers on this machine: `python launch.py --peers 5` (see --help)."""
import sys

from p2pfed.run.launch.launcher import main

if __name__ == "__main__":
    sys.exit(main())
