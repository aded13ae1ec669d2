# model=trained: replication across training seeds. Every seed of `trained_seeds` other than `seed`
# (the paper's model) trains one more model under results/trained/seeds/<seed>/ and runs circuit
# discovery on it (the pipeline's prompts; no stability resamples: only which components are in the
# circuit is compared); the `replication` analysis of each task reads them (EXTRA_SEEDS, common.smk).
if EXTRA_SEEDS:

    wildcard_constraints:
        tseed=r"\d+",

    rule train_seed:
        input:
            code=code("train_model.py", tasks=TASKS),
        output:
            directory(paths.fill(paths.SEED_MODEL_DIR, R)),
        params:
            train=config.get("train", {}),
            seed=config["seed"],
            train_seed=lambda wc: int(wc.tseed),
            tasks=TASKS,
            n_prompts=config["n_prompts"],
            min_prompts=config["min_prompts"],
        threads: config.get("train", {}).get("threads", 1)
        priority: PRIORITY["prompts"]  # the seeds' circuit jobs wait on it
        resources:
            mem_mb=4000,
        conda:
            ENV
        log:
            log("train_seed"),
        benchmark:
            bench("train_seed")
        script:
            "../../scripts/train_model.py"

    SEED_ANALYSES = ["edges", "circuit"]

    rule seed_circuits:
        input:
            prompts=paths.fill(paths.PROMPTS, R),
            model=paths.fill(paths.SEED_MODEL_DIR, R),
            code=lambda wc: code("analyze.py", [ANALYSES[a].module for a in SEED_ANALYSES], related_tasks(wc.task)),
        output:
            **{a: paths.fill(paths.SEED_RESULT, R, analysis=a, ext=ANALYSES[a].ext) for a in SEED_ANALYSES},
            **{f"{a}_meta": paths.fill(paths.SEED_META, R, analysis=a) for a in SEED_ANALYSES},
        params:
            analyses=SEED_ANALYSES,
            task=lambda wc: wc.task,
            model_dir=lambda wc, input: input.model,
            settings={**settings_of(SEED_ANALYSES, config), "stability_resamples": 0, "acdc_max_edges": 0},
        priority: PRIORITY["circuits"]
        resources:
            gpu=GPUS,
            mem_mb=ANALYSIS_MEM_MB,
        conda:
            ENV
        log:
            log("seed_circuits"),
        benchmark:
            bench("seed_circuits")
        script:
            "../../scripts/analyze.py"
