# One rule per registered analysis (src/opposites/analyses), each run per task.
for _name, _analysis in ANALYSES.items():

    rule:
        name:
            f"analyze_{_name}"
        input:
            prompts=paths.fill(paths.PROMPTS, R),
            model=model_input,
            code=_analysis.module,
            **{dep: paths.fill(paths.RESULT, R, analysis=dep, ext=ANALYSES[dep].ext) for dep in _analysis.requires},
        output:
            result=paths.fill(paths.RESULT, R, analysis=_name, ext=_analysis.ext),
            meta=paths.fill(paths.META, R, analysis=_name),
        params:
            analysis=_name,
            model_dir=MODEL_DIR if OFFLINE else None,
            settings={key: config[key] for key in _analysis.settings},
        conda:
            ENV
        log:
            log("analyze", analysis=_name),
        benchmark:
            bench("analyze", analysis=_name)
        wildcard_constraints:
            task="|".join(t for t in TASKS if _analysis.applies(t)) or "^$",
        script:
            "../../scripts/analyze.py"
