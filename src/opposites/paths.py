"""Every file the pipeline writes, as one pattern each. The Snakefile fills {R} (results/<model>)
and leaves the other fields as wildcards; the paper uses the same patterns to find benchmarks."""

MODEL_DIR = "{R}/model"
PROMPTS = "{R}/{task}/prompts.jsonl"
RESULT = "{R}/{task}/{analysis}.{ext}"
META = "{R}/{task}/{analysis}.meta.json"
ITEM = "{R}/{folder}/{item}.{ext}"
SEED_MODEL_DIR = "{R}/seeds/{tseed}/model"  # model=trained: the models of the other training seeds
SEED_RESULT = "{R}/seeds/{tseed}/{task}/{analysis}.{ext}"
SEED_META = "{R}/seeds/{tseed}/{task}/{analysis}.meta.json"
PAPER_TEX = "{R}/paper/paper.tex"
PAPER_PDF = "{R}/paper/paper.pdf"
MECHANISM = "{R}/paper/mechanism.json"  # per task, the mechanism in fields (summary.glance)
BENCH = {
    "build_model": "{R}/benchmarks/build_model.tsv",
    "train_model": "{R}/benchmarks/train_model.tsv",
    "train_seed": "{R}/benchmarks/train_seed/{tseed}.tsv",
    "seed_circuits": "{R}/benchmarks/seed_circuits/{tseed}/{task}.tsv",
    "prompts": "{R}/benchmarks/prompts/{task}.tsv",
    "analyze": "{R}/benchmarks/analyze/{task}/{stage}.tsv",
    "figure": "{R}/benchmarks/figure/{item}.tsv",
    "table": "{R}/benchmarks/table/{item}.tsv",
    "paper_pdf": "{R}/benchmarks/paper_pdf.tsv",
}
LOG = {rule: p.replace("/benchmarks/", "/logs/").replace(".tsv", ".log") for rule, p in BENCH.items()}


def fill(pattern: str, results: str, **fields: str) -> str:
    """Fill {R} and any named fields, leaving the others as wildcards."""
    out = pattern.replace("{R}", results)
    for key, value in fields.items():
        out = out.replace("{" + key + "}", str(value))
    return out
