"""Using what mmpt trains elsewhere, and starting from adapters trained elsewhere.

- `python -m mmpt.export RUN_DIR --format peft|merged --out DIR` (__main__.py): a PEFT adapter
  directory (peft_format.py) or a plain transformers model with the adapter folded in (merged.py);
  encoder runs also get their task head (head.py); a prefix's keys move to PEFT's cache positions
  (prefix_cache.py), where the backbone allows it.
- `train.py ... init_from=peft:DIR` (importer.py): a PEFT adapter loaded into the run's method.

Methods only declare how their parameters map to PEFT's names (`Method.peft_mapping()`, with the
types in mapping.py); everything else about the formats lives here. Keep this file free of
imports: mmpt.methods imports mapping.py.
"""
