"""Expert libraries: collect the adapters and skills of finished runs, reuse them on a new task.

    python -m mmpt.library build --out DIR SOURCES...   (store.py: the directory format;
                                                        extract.py: EXTRACTORS, run -> experts)
    python -m mmpt.library show DIR
    python finetune.py library=DIR dataset=X finetune_type=T   (finetune.py: FINETUNE_TYPES;
                                                        methods.py: arrow, merges, weighted)
"""
from mmpt.library.store import Expert, Library, LibraryError

__all__ = ["Expert", "Library", "LibraryError"]
