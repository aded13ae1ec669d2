# The paper build. Targets are derived from config.yaml and paper/outline.yaml; rules live in
# workflow/rules. `snakemake --cores 4 paper` builds results/<model>/paper/paper.pdf.

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/analyses.smk"
include: "workflow/rules/seeds.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/archive.smk"


rule paper:
    input:
        # the figures and tables too, so that deleting one rebuilds it (and then the PDF)
        PAPER_PDF,
        [item.path(R) for item in OUTLINE.items()],
    default_target: True


rule figures:
    input:
        [item.path(R) for item in OUTLINE.items()],


onsuccess:
    if Path(PAPER_PDF).exists():
        print(f"The paper: {PAPER_PDF}")


# On a cluster (profiles/slurm) these run on the submitting machine, never as jobs: they only read
# results and write figures, tables and the PDF, with LaTeX, which compute nodes may lack. The same
# list is opposites.cluster.LOCAL_RULES (the Slurm profile gives them no resources).
localrules:
    paper,
    figures,
    figure,
    table,
    paper_pdf,
    archive,
