"""safetensors files read with one-line errors.

safetensors reports a missing, truncated or corrupt file as an OSError or SafetensorError whose
text ("Error while deserializing header: invalid header length") names neither the file nor
what was expected. Every reader of a safetensors file mmpt did not just write goes through
`load` or `shapes` here, with the error class of its caller (a checkpoint, an adapter, a library
...), so the user gets one line naming the file.
"""
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

EXPECTED = "expected a complete safetensors file"


def reason(e: Exception) -> str:
    """The first line of an exception's text (safetensors' can be long), or its class name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load(path, error, what: str = "tensors") -> dict:
    """{name: tensor} of the file at `path`; else `error(message)` naming the file and `what` it holds."""
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise error(f"{path}: cannot read the {what} ({reason(e)}); {EXPECTED}") from None


def shapes(path, error, what: str = "tensors") -> dict:
    """{name: shape} from the header alone (safetensors checks there that the data covers the whole
    file, so a truncated file is caught without reading the tensors)."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise error(f"{path}: cannot read the {what} ({reason(e)}); {EXPECTED}") from None
