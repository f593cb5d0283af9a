"""`python -m owl3.train ...` / `torchrun --nproc-per-node K -m owl3.train ...`: the `owl3 train` command."""

import sys

from owl3.training.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
