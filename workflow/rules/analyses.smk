# One job per stage and task (src/opposites/analyses: ANALYSES, STAGES): the analyses of a stage share
# one model load; each still writes its own result and provenance file.


def stage_code(stage, task):
    """The code a stage job runs: analyze.py, its analyses' modules and what they import, the task
    files of the task and of the tasks it refers to."""
    names = stage_analyses(stage, task)
    tasks = TASKS if any(ANALYSES[a].across for a in names) else related_tasks(task)  # across: every task's file
    return code("analyze.py", [ANALYSES[a].module for a in names], tasks)


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
                code=stage_code(_stage, _task),
                **{dep: result_path(R, _task, dep) for a in _names for dep in ANALYSES[a].requires
                   if ANALYSES[dep].stage != _stage and not ANALYSES[a].across},
                **{k: v for a in _names if ANALYSES[a].across for k, v in across_inputs(R, a, TASKS).items()},
                **(seed_inputs(R, _task, EXTRA_SEEDS) if any(ANALYSES[a].seeds for a in _names) else {}),
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


if ARCHIVED:  # unpacked results: say which stages' code differs from the code that made them
    _expected = {(_t, _s): (stage_analyses(_s, _t), codedeps.code_hash(stage_code(_s, _t)))
                 for _s in STAGES for _t in TASKS if stage_analyses(_s, _t)}
    if _changed := archive.code_changes(R, _expected):
        print(_changed, file=sys.stderr)
