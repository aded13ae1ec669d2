"""A job started by a real Snakemake ends when that Snakemake is killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from opposites import lifeline

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lifeline watches /proc (Linux)")


def _wait_for(path: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return True
        time.sleep(0.1)
    return False


def test_a_job_exits_when_snakemake_is_killed(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import os, time
        from opposites import lifeline
        assert lifeline.watch(interval=0.1) is not None, "no snakemake above the job"
        open(snakemake.params.pidfile, "w").write(str(os.getpid()))
        time.sleep(120)
        open(snakemake.output[0], "w").write("done")
    """))
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule slow:
            output: "out.txt"
            params: pidfile="{tmp_path / 'job.pid'}"
            script: "job.py"
    """))
    smk = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "out.txt"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert _wait_for(tmp_path / "job.pid", 60), smk.stderr.read().decode() if smk.poll() is not None else "no job"
        job = int((tmp_path / "job.pid").read_text())
        assert lifeline.alive(job, lifeline._stat(job)[1])
        os.kill(smk.pid, signal.SIGKILL)
        smk.wait()
        end = time.monotonic() + 10
        while lifeline._stat(job) is not None and time.monotonic() < end:
            time.sleep(0.1)
        gone = lifeline._stat(job) is None
        if not gone:
            os.kill(job, signal.SIGKILL)
        assert gone, "the job kept running after snakemake was killed"
        assert not (tmp_path / "out.txt").exists()
    finally:
        if smk.poll() is None:
            os.killpg(smk.pid, signal.SIGKILL)


def test_pid_reuse_is_not_mistaken_for_the_same_process():
    pid, start = os.getpid(), lifeline._stat(os.getpid())[1]
    assert lifeline.alive(pid, start) and not lifeline.alive(pid, start + 1)
