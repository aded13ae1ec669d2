rule prompts:
    input:
        spec=lambda wc: str(task_file(wc.task)),
        model=model_input,
    output:
        paths.fill(paths.PROMPTS, R),
    params:
        n_prompts=config["n_prompts"],
        min_prompts=config["min_prompts"],
        seed=config["seed"],
        tokenizer_source=MODEL_DIR if OFFLINE else MODEL,
    priority: PRIORITY["prompts"]
    conda:
        ENV
    log:
        log("prompts"),
    benchmark:
        bench("prompts")
    script:
        "../../scripts/make_prompts.py"
