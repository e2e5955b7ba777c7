"""Ray job entrypoint for a Tune sweep: the same options as `t2p tune`.

    ray job submit --working-dir . -- python jobs/tune.py --data /mnt/shared/data --out /mnt/shared/sweeps/s1 \
        --samples 16 --epochs 30 --gpu
"""
import sys

from t2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
