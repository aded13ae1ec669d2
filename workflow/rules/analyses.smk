# One job per stage and task (src/opposites/analyses: ANALYSES, STAGES): the analyses of a stage share
# one model load; each still writes its own result and provenance file.
for _stage in STAGES:
    for _task in TASKS:
        _names = stage_analyses(_stage, _task)
        if not _names:
            continue

        rule:
            name:
                f"{_stage}_{_task}"
            input:
                prompts=paths.fill(paths.PROMPTS, R, task=_task),
                model=model_input,
                code=sorted({ANALYSES[a].module for a in _names}),
                **{dep: result_path(R, _task, dep) for a in _names for dep in ANALYSES[a].requires
                   if ANALYSES[dep].stage != _stage},
            output:
                **{a: result_path(R, _task, a) for a in _names},
                **{f"{a}_meta": paths.fill(paths.META, R, task=_task, analysis=a) for a in _names},
            params:
                analyses=_names,
                task=_task,
                model_dir=MODEL_DIR if OFFLINE else None,
                settings=settings_of(_names, config),
            priority: PRIORITY[_stage]  # every stage has one (tests/test_stage.py)
            resources:
                gpu=GPUS,  # a scheduler (Slurm) places analysis jobs on GPU nodes; locally unconstrained
                mem_mb=ANALYSIS_MEM_MB,
            conda:
                ENV
            log:
                log("analyze", task=_task, stage=_stage),
            benchmark:
                bench("analyze", task=_task, stage=_stage)
            script:
                "../../scripts/analyze.py"
