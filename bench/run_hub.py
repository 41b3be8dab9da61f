"""`hub serve` with the test channel registered: the benchmark's hub process."""

import sys

import tests.support.testchannel  # noqa: F401  (registers channel "testchan")
from hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
