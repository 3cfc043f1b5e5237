"""The quickstart through the Python API: demo data, vocabulary, model, scoring.

python examples/quickstart.py [--rows 200000] [--workdir dscore-example]
"""

import argparse

import dscore
from dscore.demo import build_example


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workdir", default="dscore-example")
    args = parser.parse_args()
    job = build_example(args.workdir, args.rows)  # data/, vocab/, model.pt, job.yaml
    report = dscore.run(job, overwrite=True)  # starts a LocalCluster, scores, writes scores/
    print(report.format())


if __name__ == "__main__":  # worker processes are spawned and re-import this file
    main()
