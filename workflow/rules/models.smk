# The model directory for the kinds the pipeline makes itself: toy and random:* are built with seeded
# random weights; trained is trained on the tasks' own sentences (src/opposites/training.py).
if cfg.model_kind(MODEL) == "trained":

    rule train_model:
        input:
            code=code("train_model.py", tasks=TASKS),
        output:
            directory(MODEL_DIR),
        params:
            train=config.get("train", {}),
            seed=config["seed"],  # draws the evaluation prompts
            train_seed=config["seed"],  # the paper's model; the extra seeds' rule passes its own
            tasks=TASKS,
            n_prompts=config["n_prompts"],
            min_prompts=config["min_prompts"],
        threads: config.get("train", {}).get("threads", 1)  # its torch threads (bitwise reproducible for a fixed count)
        resources:
            mem_mb=4000,
        conda:
            ENV
        log:
            log("train_model"),
        benchmark:
            bench("train_model")
        script:
            "../../scripts/train_model.py"

else:

    rule build_model:
        input:
            code=code("build_model.py"),
        output:
            directory(MODEL_DIR),
        params:
            seed=config["seed"],
        conda:
            ENV
        log:
            log("build_model"),
        benchmark:
            bench("build_model")
        script:
            "../../scripts/build_model.py"
