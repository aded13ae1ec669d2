# `snakemake --cores 1 archive` packs results/<model>/ (results, provenance, figures, tables, logs,
# benchmarks; no weights, no paper) into results/<model>.tar.gz with a manifest of checksums.
# Unpacked in a fresh clone (tar xzf), `snakemake paper` builds the PDF offline from it.
rule archive:
    input:
        results=ALL_RESULTS,
        outline_items=[item.path(R) for item in OUTLINE.items()],
        code=code("archive.py"),
    output:
        f"{R}.tar.gz",
    params:
        results=lambda wildcards, output: output[0].removesuffix(".tar.gz"),
    conda:
        ENV
    log:
        f"{R}.archive.log",  # beside the archive, not inside what it packs
    benchmark:
        f"{R}.archive.tsv"
    script:
        "../../scripts/archive.py"
