"""Expert libraries: collect the adapters and skills of finished runs, reuse them on a new task.

    python -m mmpt.library build --out DIR SOURCES...   store.py: the directory format;
                                                        extract.py: build; experts.py: EXTRACTORS
                                                        (lora_experts.py, prompt_experts.py)
    python -m mmpt.library show DIR
    python finetune.py library=DIR dataset=X finetune_type=T
                                                        types/: LIBRARY_TYPES; methods.py: arrow,
                                                        merges, weighted (the recipe: mmpt/recipes/library.py)
"""
from mmpt.library.store import Expert, Library, LibraryError

__all__ = ["Expert", "Library", "LibraryError"]
