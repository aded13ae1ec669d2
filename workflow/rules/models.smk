rule build_model:
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
