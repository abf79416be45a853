"""Training open_clip on a curated table with Ray Train: kept patches only, rewritten captions.

Modules: ``kept_patches`` (the gather that replaces PatchDropout), ``factory`` (model + tokenizer),
``data`` (Ray Data pipeline), ``loop`` (per-worker train function), ``schedule``, ``checkpoint``,
``evaluate`` (retrieval, zero-shot), ``job`` (CLI entry, TorchTrainer).
"""
