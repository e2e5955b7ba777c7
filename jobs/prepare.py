"""Ray job entrypoint for data preparation: the same options as `t2p prepare`."""
import sys

from t2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
