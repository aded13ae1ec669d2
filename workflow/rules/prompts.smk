rule prompts:
    input:
        code=lambda wc: code("make_prompts.py", tasks=[wc.task]),
        model=model_input,
    output:
        prompts=paths.fill(paths.PROMPTS, R),
        meta=paths.fill(paths.META, R, analysis="prompts"),
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
