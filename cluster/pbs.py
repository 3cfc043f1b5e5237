#!/usr/bin/env python3
"""Start a Dask cluster whose workers run as PBS jobs; print its address.

    python cluster/pbs.py --jobs 4 --cores 32 --memory 128GB --interface ib0 --dry-run
    python cluster/pbs.py --jobs 4 --cores 32 --memory 128GB --interface ib0 \\
        --walltime 04:00:00 --queue QUEUE --account PROJECT

See --help and cluster/README.md.
"""

import sys

from _jobqueue import System, main

PBS = System(
    name="PBS",
    cluster_class="PBSCluster",
    prog="pbs.py",
    directive_example="-l ngpus=1",
    extra_options=(
        (
            "--resource-spec",
            "resource_spec",
            ("PBS -l resource request, e.g. 'select=1:ncpus=32:mem=128GB' (default: built from --cores and --memory)"),
        ),
    ),
)

if __name__ == "__main__":
    sys.exit(main(PBS))
