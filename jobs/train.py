"""Ray job entrypoint for training: the same options as `t2p train`.

    ray job submit --working-dir . -- python jobs/train.py --data /mnt/shared/data --out /mnt/shared/runs/r1 \
        --workers 4 --gpu --epochs 100
"""
import sys

from t2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
