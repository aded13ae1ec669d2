import opposites.figures
import opposites.paper

FIGURE_IDS = [i.id for i in OUTLINE.items("figure")]
TABLE_IDS = [i.id for i in OUTLINE.items("table")]
SECTION_TITLES = opposites.paper.report_categories(OUTLINE)  # the report's categories, in the paper's order
FIGURE_MODULES = sorted(str(p) for p in Path(opposites.figures.HERE).glob("*.py"))


rule figure:
    input:
        data=lambda wc: item_inputs(OUTLINE.item(wc.item)),
        code=lambda wc: code("render_figure.py", [opposites.figures.module_file(OUTLINE.item(wc.item).section)],
                             OUTLINE.item(wc.item).tasks),
    output:
        report(paths.fill(paths.ITEM, R, folder="figures", ext="pdf"), caption="../report/item.rst",
               category=lambda wc: SECTION_TITLES[OUTLINE.item(wc.item).section]),
    params:
        caption=lambda wc: opposites.paper.caption_text(OUTLINE.item(wc.item), config),
        tasks=lambda wc: list(OUTLINE.item(wc.item).tasks),
        analyses=lambda wc: list(OUTLINE.item(wc.item).analyses),
        section=lambda wc: OUTLINE.item(wc.item).section,
        print_box=lambda wc: list(OUTLINE.item(wc.item).print_box()),
        results=lambda wildcards, output: results_of(output[0]),
    wildcard_constraints:
        item="|".join(FIGURE_IDS) or "^$",
    conda:
        ENV
    log:
        log("figure"),
    benchmark:
        bench("figure")
    script:
        "../../scripts/render_figure.py"


rule table:
    input:
        data=lambda wc: item_inputs(OUTLINE.item(wc.item)),
        code=lambda wc: code("render_table.py", tasks=OUTLINE.item(wc.item).tasks),
    output:
        report(paths.fill(paths.ITEM, R, folder="tables", ext="tex"), caption="../report/item.rst",
               category=lambda wc: SECTION_TITLES[OUTLINE.item(wc.item).section]),
    params:
        caption=lambda wc: opposites.paper.caption_text(OUTLINE.item(wc.item), config),
        tasks=lambda wc: list(OUTLINE.item(wc.item).tasks),
        analyses=lambda wc: list(OUTLINE.item(wc.item).analyses),
        section=lambda wc: OUTLINE.item(wc.item).section,
        results=lambda wildcards, output: results_of(output[0]),
    wildcard_constraints:
        item="|".join(TABLE_IDS) or "^$",
    conda:
        ENV
    log:
        log("table"),
    benchmark:
        bench("table")
    script:
        "../../scripts/render_table.py"
