"""Write the Slurm profile's per-rule resources from a finished build's benchmark files.

    python3 scripts/slurm_resources.py results/toy --out profiles/slurm/config.yaml \
        --note "2-core CPU machine, CPU only"

Reads results/<model>/benchmarks/ (one file per job), keeps each rule's largest job and writes
profiles/slurm/config.yaml (or prints it without --out): see src/opposites/cluster.py for the
headroom rules."""

import argparse
import shlex
import sys
import time
from pathlib import Path

import yaml

from opposites.cluster import build_settings, measure, render_profile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a finished build's results/<model> directory")
    ap.add_argument("--out", help="write the profile here (default: print it)")
    ap.add_argument("--note", default="", help="where it was measured, for the header (machine, cores, GPU)")
    args = ap.parse_args(argv)

    measured = measure(args.results)
    cfg = build_settings(args.results)
    newest = max(p.stat().st_mtime for p in Path(args.results, "benchmarks").rglob("*.tsv"))
    build = ", ".join(f"{k}={cfg[k]}" for k in ("model", "n_prompts", "device", "batch_size") if k in cfg)
    measured_on = (f"{args.results} ({build or 'config unknown'}), {sum(m.jobs for m in measured.values())} jobs, "
                   f"{time.strftime('%Y-%m-%d', time.gmtime(newest))}" + (f", {args.note}" if args.note else ""))
    given = argv if argv is not None else sys.argv[1:]
    command = "python3 scripts/slurm_resources.py " + " ".join(shlex.quote(a) for a in given)
    site = {}
    if args.out and Path(args.out).exists():  # keep what a site added (slurm_account, slurm_partition, ...)
        site = (yaml.safe_load(Path(args.out).read_text()) or {}).get("default-resources") or {}
    text = render_profile(measured, measured_on, command, site)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: resources for {len(measured)} rules from {args.results}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
