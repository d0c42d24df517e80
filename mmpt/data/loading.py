"""Raw records from local files (jsonl, GLUE tsv) through HF `datasets`, or from the hub.

Each reader returns `[(line, record)]`: `line` is the 1-based line number of the record in the
file, so every later parse error can point at it. Local files are loaded without a persistent
cache: they are small, loading takes well under a second, and a cache keyed on path and mtime
could go stale; hub downloads use the usual `datasets` cache."""
from __future__ import annotations

import contextlib
import csv
import json
import tempfile
from pathlib import Path

from mmpt.errors import DataError


@contextlib.contextmanager
def _quiet():
    """Silence `datasets` progress bars and its own error logs (we raise DataError instead)."""
    import datasets

    verbosity, bars_off = datasets.logging.get_verbosity(), datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; DataError for a missing or empty file."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: MRPC's header starts with a BOM
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    # split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings
    lines = [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise DataError(path, "file is empty; expected one record per line")
    return lines


def _load_local(kind: str, path: Path, **kwargs) -> list[dict]:
    import datasets

    with _quiet(), tempfile.TemporaryDirectory(prefix="mmpt-datasets-") as cache:
        ds = datasets.load_dataset(kind, data_files={"train": str(path)}, split="train",
                                   cache_dir=cache, keep_in_memory=True, **kwargs)
        return ds.to_list()


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    path = Path(path)
    lines = _lines(path)
    try:
        records = _load_local("json", path)
    except Exception:  # noqa: BLE001 - any failure is explained by the scan below
        records = None
    if records is None or len(records) != len(lines):
        # datasets reports no usable line number (and fails on fields that change type between
        # rows); parsing line by line finds the bad line, or else gives the rows themselves
        records = []
        for number, text in lines:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(path, f"not valid JSON ({err.msg} at column {err.colno}); "
                                "expected one JSON object per line", line=number) from None
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            records.append(record)
    return [(number, record) for (number, _), record in zip(lines, records)]


def read_tsv(path: str | Path, columns: list[str] | None = None) -> list[tuple[int, dict]]:
    """A GLUE tsv: tab-separated, no quoting (GLUE text contains bare `"`), all values read as
    strings. `columns` names the fields of a header-less file (CoLA); otherwise line 1 does."""
    import datasets

    path = Path(path)
    lines = _lines(path)
    header = columns or lines[0][1].split("\t")
    rows = lines if columns else lines[1:]
    if not rows:
        raise DataError(path, f"no data rows; expected tab-separated rows of {header}")
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", na_filter=False,
                   features=datasets.Features({c: datasets.Value("string") for c in header}))
    if columns:
        options["column_names"] = columns
    try:
        records = _load_local("csv", path, **options)
    except Exception as err:  # noqa: BLE001 - most likely a row with too many fields: find it
        for number, text in rows:
            found = len(text.split("\t"))
            if found > len(header):
                raise DataError(path, f"expected {len(header)} tab-separated fields {header}, "
                                f"got {found}", line=number) from None
        raise DataError(path, f"could not be read as a tab-separated file: {err}") from None
    if len(records) != len(rows):  # rows pandas saw differently: split them ourselves
        records = [dict(zip(header, text.split("\t"))) for _, text in rows]
    for (_, text), record in zip(rows, records):
        # pandas pads a short row with "" (na_filter is off so that text like "NA" stays text);
        # fields the line does not have at all are missing, not empty
        for name in header[len(text.split("\t")):]:
            record[name] = None
    return [(number, record) for (number, _), record in zip(rows, records)]


def read_hub(repo: str, name: str, split: str) -> list[dict]:
    """Rows of the hub's parquet copy (e.g. `aps/super_glue`, `rte`); labels there are ints."""
    try:
        import datasets

        with _quiet():
            ds = datasets.load_dataset(repo, name, split=split)
    except Exception as err:  # noqa: BLE001 - offline, unknown config, ...: say what to do
        raise DataError(f"hub:{repo}/{name}", f"could not load split {split!r} from the hub "
                        f"({type(err).__name__}: {err}); set dataset.data_dir or MMPT_DATA_DIR "
                        "to a local copy of the data") from None
    return ds.to_list()
