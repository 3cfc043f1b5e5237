#!/usr/bin/env python3
"""Start a Dask cluster whose workers run as SLURM jobs; print its address.

    python cluster/slurm.py --jobs 4 --cores 32 --memory 128GB --interface ib0 --dry-run
    python cluster/slurm.py --jobs 4 --cores 32 --memory 128GB --interface ib0 \\
        --walltime 04:00:00 --queue QUEUE --account ACCOUNT

See --help and cluster/README.md.
"""

import sys

from _jobqueue import System, main

SLURM = System(
    name="SLURM",
    cluster_class="SLURMCluster",
    prog="slurm.py",
    directive_example="--gres=gpu:1",
)

if __name__ == "__main__":
    sys.exit(main(SLURM))
