from pathlib import Path

import opposites.paper


rule paper_tex:
    input:
        outline_items=[item.path(R) for item in OUTLINE.items()],
        results=[result_path(R, t, a) for t in TASKS for a in ("prompts", "baseline", "logit_lens", "head_dla")],
        outline="paper/outline.yaml",
        template="paper/paper.tex",
        sections=sorted(str(p) for p in Path("paper/sections").glob("*.tex")),
        bib="paper/references.bib",
        code=opposites.paper.__file__,
    output:
        PAPER_TEX,
    conda:
        ENV
    log:
        log("paper_tex"),
    benchmark:
        bench("paper_tex")
    script:
        "../../scripts/paper_tex.py"


rule paper_pdf:
    input:
        PAPER_TEX,
    output:
        PAPER_PDF,
    conda:
        ENV
    log:
        log("paper_pdf"),
    benchmark:
        bench("paper_pdf")
    script:
        "../../scripts/paper_pdf.py"
