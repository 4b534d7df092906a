"""Benchmarks: measure and print the figures the README quotes. Not tests: nothing here asserts.

    python bench.py part1     # Part 1: the MSE floor of the 1-3-3-1 net, the default recipe over 20 seeds
    python bench.py unet      # the U-Net's training and inference throughput (and diffusers', if installed)
    python bench.py train     # Part 2: training speed, sampling time, sample quality

Run them on a quiet machine: other work on the same cores changes every timing.
"""
import argparse
import sys


# --- part1 -----------------------------------------------------------------------------------------


# --- unet ------------------------------------------------------------------------------------------


# --- train -----------------------------------------------------------------------------------------


BENCHES = {}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark to run")
    args, rest = parser.parse_known_args()
    BENCHES[args.which](rest)


if __name__ == "__main__":
    main()
