"""Using what mmpt trains elsewhere, and starting from adapters trained elsewhere.

- `python -m mmpt.export RUN_DIR --format peft|merged --out DIR` (__main__.py): a PEFT adapter
  directory (peft_format.py) or a plain transformers model with the adapter folded in (merged.py);
  encoder runs also get their task head (head.py); a prefix's keys move to PEFT's cache positions
  (prefix_cache.py), where the backbone allows it.
- `train.py ... init_from=peft:DIR` (importer.py): a PEFT adapter loaded into the run's method.

How each method's parameters map to PEFT's names is declared here too, registered by method name
(mappings.py, with the types in mapping.py); the methods know nothing of PEFT.
"""
