"""dscore's settings: defaults in dscore.yaml, dask config and DASK_DSCORE__ variables
over them, --set dscore.KEY on the command line, and a job's snapshot in its tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import dask
import yaml

from dscore import config


def test_defaults_load_from_the_package_yaml():
    with open(os.path.join(os.path.dirname(config.__file__), "dscore.yaml")) as f:
        defaults = yaml.safe_load(f)["dscore"]
    assert config.snapshot() == defaults
    assert config.get("tune.rows") == 8192 and config.get("tune.batches") == [256, 1024, 4096, 16384]
    assert config.get("memory.release_at") == 0.6  # - and _ are one
    assert config.get("partition-bytes") == "64MiB"


def test_dask_config_overrides_and_is_read_when_used():
    with dask.config.set({"dscore.tune.rows": 100}):
        assert config.get("tune.rows") == 100
    assert config.get("tune.rows") == 8192


def test_a_snapshot_does_not_change_with_the_config():
    snapshot = config.snapshot()
    with dask.config.set({"dscore.tune.rows": 100}):
        assert snapshot["tune"]["rows"] == 8192
        with config.using(snapshot):
            assert config.get("tune.rows") == 8192


def test_environment_variables_override_the_defaults():
    code = "from dscore import config, JobSpec, Field; print(config.get('tune.rows'), config.get('memory.release-at'), "
    code += "JobSpec('in/', 'o/', [Field('f', buckets=8)], 'm.pt').partition_bytes)"
    env = {**os.environ, "DASK_DSCORE__TUNE__ROWS": "100", "DASK_DSCORE__MEMORY__RELEASE_AT": "0.9",
           "DASK_DSCORE__PARTITION_BYTES": "8MiB"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["100", "0.9", "8MiB"]


def test_using_carries_settings_into_its_thread_only():
    settings = config.snapshot()
    settings["tune"] = {**settings["tune"], "rows": 5}
    inside, entered, checked = {}, threading.Event(), threading.Event()

    def task():
        with config.using(settings):
            inside["rows"] = config.get("tune.rows")
            entered.set()
            checked.wait(10)
        inside["after"] = config.get("tune.rows")

    t = threading.Thread(target=task)
    t.start()
    entered.wait(10)
    outside = config.get("tune.rows")  # while the other thread is inside its block
    checked.set()
    t.join()
    assert inside == {"rows": 5, "after": 8192} and outside == 8192


def test_set_on_the_command_line_reaches_the_code(tmp_path):
    """``--set dscore.KEY=VALUE`` sets the dask config key (read as YAML) before the job
    is loaded; other --set items stay job keys."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"input": "in/", "output": "out/", "model": "m.pt",
                                   "fields": [{"name": "f", "buckets": 8}]}))  # fmt: skip
    code = (
        "import sys, dask, dscore.pipeline as p\n"
        "from dscore import config\n"
        "def run(spec, **kw):\n"
        "    print(config.get('tune.rows'), config.get('tune.batches'), spec.partition_bytes, spec.model.batch_size)\n"
        "    sys.exit(0)\n"
        "p.run = run\n"
        "from dscore.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["score", str(job), "--set", "dscore.tune.rows=123", "--set", "dscore.tune.batches=[64, 128]",
            "--set", "dscore.partition-bytes=1MiB", "--set", "model.batch_size=64"]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "123 [64, 128] 1MiB 64"
