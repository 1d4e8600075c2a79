"""Prints what a process was given (tests only; tests/test_forkserver.py): `python tests/probe.py ARGS`."""
from __future__ import annotations

import json
import os
import random
import sys

import numpy as np

if __name__ == "__main__":
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "sid": os.getsid(0),
                      "pid": os.getpid(), "env": os.environ.get("P2PFED_FORKSERVER_CHECK"),
                      "c_env": os.popen("echo $P2PFED_FORKSERVER_CHECK").read().strip(),
                      "random": random.random(), "np_random": float(np.random.random())}))
    sys.exit(int(sys.argv[1]))
