from pathlib import Path

import opposites.paper


# One rule renders and compiles, so the PDF's inputs are the results themselves: a stale PDF can
# never survive a missing or failed intermediate.
rule paper_pdf:
    input:
        outline_items=[item.path(R) for item in OUTLINE.items()],
        results=ALL_RESULTS,
        outline="paper/outline.yaml",
        template="paper/paper.tex",
        sections=sorted(str(p) for p in Path("paper/sections").glob("*.tex")),
        bib="paper/references.bib",
        code=code("paper.py", FIGURE_MODULES, TASKS),  # the outline's check imports every figure module
    output:
        tex=PAPER_TEX,
        pdf=PAPER_PDF,
        mechanism=paths.fill(paths.MECHANISM, R),
    params:
        results=lambda wildcards, output: results_of(output[0]),
    conda:
        ENV
    log:
        log("paper_pdf"),
    benchmark:
        bench("paper_pdf")
    script:
        "../../scripts/paper.py"
