"""Tables linked from ``report.json``: bulky lists of entries written beside it as CSV files.

An analysis declares a list that grows with windows or bursts rather than runs as a field of type
``"table"`` (``Field("spiral_windows", ..., "table", place="report")``). The report keeps its rows
in memory (:attr:`geomtraj.report.Report.doc`), but :func:`link_tables` writes them to
``NAME.csv.gz`` beside ``report.json`` and leaves in the document a link: the file's relative path,
its row count, its columns with their types and its SHA-256. :func:`load_report` reads a report
folder back with every linked table inline again, and reads reports written before tables were
linked (rows inline) as they are. See ``docs/report.md`` ("Linked tables").

The CSV is gzip-compressed (lossless; a 1600-run grid's windows take a third of the bytes) and
opens with pandas (``pandas.read_csv``) or the standard library's ``gzip`` and ``csv``. Cells are
lossless: floats are written as Python's shortest round-trip ``repr``, ``null`` is an empty
cell, booleans are ``true``/``false``, and a column holding lists, objects or mixed types holds
each value as JSON text (type ``"json"``). Only the standard library is imported here.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from geomtraj.errors import GeomtrajError

__all__ = [
    "is_link",
    "link_tables",
    "load_report",
    "read_table",
    "table_fields",
    "table_file",
    "write_table",
]

#: Types of a linked table's columns (``columns[].type`` of a link).
COLUMN_TYPES = ("int", "num", "bool", "str", "json")

#: Keys every link carries.
LINK_KEYS = ("table", "format", "n_rows", "columns", "sha256")


def is_link(value) -> bool:
    """True when ``value`` is a link to a table file (a mapping with every key of a link)."""
    return isinstance(value, Mapping) and all(k in value for k in LINK_KEYS)


def table_fields(doc: Mapping) -> list[tuple[str, ...]]:
    """Keys of every field of type ``"table"`` that ``doc``'s analyses declare.

    The document describes its analyses (``analyses.<name>.fields``); a document that does not
    (a hand-made one) gets the fields of the shipped analyses.
    """
    described = [st for st in (doc.get("analyses") or {}).values() if isinstance(st, Mapping)]
    fields = [f for st in described for f in st.get("fields") or []]
    if not any("fields" in st for st in described):
        from geomtraj.report.assemble import describe, report_declarations

        fields = [f for d in report_declarations().values() for f in describe(d)["fields"]]
    names = [f["name"] for f in fields if f.get("type") == "table"]
    return [tuple(n.split(".")) for n in dict.fromkeys(names)]


def table_file(keys: Sequence[str]) -> str:
    """The file name of the table at ``keys`` (``spiral_windows.csv.gz`` for ``spiral_windows``)."""
    return f"{'_'.join(keys)}.csv.gz"


def _column_type(values: Iterable) -> str:
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present) and present:
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "num"  # also a column of nulls only
    if all(isinstance(v, str) and v != "" for v in present):
        return "str"  # an empty string would read back as null: such a column is JSON
    return "json"


def _cell(value, kind: str) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "num" and isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite value {value!r} in a table (JSON has none either)")
        return repr(value)  # the shortest text that reads back as the same float
    if kind == "json":
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    return str(value)


def _parse(text: str, kind: str):
    if text == "":
        return None
    if kind == "int":
        return int(text)
    if kind == "num":
        # an int was written without a point or exponent and reads back as an int
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text == "true"
    if kind == "json":
        return json.loads(text)
    return text


def write_table(rows: Sequence[Mapping], path: str | os.PathLike) -> dict:
    """Write ``rows`` (mappings) as the CSV file ``path`` and return the link to it.

    A path ending in ``.gz`` is gzip-compressed (without a time stamp, so the same rows give the
    same bytes and checksum).

    The columns are the rows' keys in order of first appearance; a row without a key gets an
    empty cell, which reads back as ``null``.
    """
    path = Path(path)
    names = list(dict.fromkeys(k for row in rows for k in row))
    kinds = [_column_type(row.get(k) for row in rows) for k in names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(k), t) for k, t in zip(names, kinds, strict=True)])
    data = buf.getvalue().encode("utf-8")
    gz = path.suffix == ".gz"
    if gz:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)
    return {
        "table": path.name,
        "format": "csv.gz" if gz else "csv",
        "n_rows": len(rows),
        "columns": [{"name": k, "type": t} for k, t in zip(names, kinds, strict=True)],
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_table(link: Mapping, base: str | os.PathLike) -> list[dict]:
    """The rows of the table ``link`` points to, relative to the report folder ``base``.

    Raises
    ------
    GeomtrajError
        When the file is missing or does not match its link (another checksum, row count or
        header, or a cell that does not parse as its column's type): a damaged table is refused,
        never read as numbers.
    """
    name = str(link["table"])
    path = Path(base) / name
    fmt = link.get("format")
    if Path(name).name != name or fmt not in ("csv", "csv.gz"):
        raise GeomtrajError(f"{path}: not a table link geomtraj wrote (table {name!r})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeomtrajError(
            f"{path}: the table linked from report.json cannot be read ({exc.strerror}); keep the "
            "report folder together"
        ) from None
    if hashlib.sha256(data).hexdigest() != link["sha256"]:
        raise GeomtrajError(
            f"{path}: the table does not match report.json (checksum differs): it was changed or "
            "damaged after the report was written; rerun geomtraj analyze"
        )
    names = [c["name"] for c in link["columns"]]
    kinds = [c["type"] for c in link["columns"]]
    try:
        text = (gzip.decompress(data) if fmt == "csv.gz" else data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise GeomtrajError(f"{path}: the table cannot be decoded ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    if header != names:
        raise GeomtrajError(f"{path}: header {header[:5]}... differs from report.json's columns")
    rows = []
    for lineno, cells in enumerate(reader, start=2):
        if len(cells) != len(names):
            raise GeomtrajError(f"{path}:{lineno}: {len(cells)} cells, {len(names)} expected")
        try:
            rows.append({k: _parse(c, t) for k, c, t in zip(names, cells, kinds, strict=True)})
        except ValueError as exc:
            raise GeomtrajError(f"{path}:{lineno}: {exc}") from None
    if len(rows) != link["n_rows"]:
        raise GeomtrajError(f"{path}: {len(rows)} rows, report.json says {link['n_rows']}")
    return rows


def _parent(doc: Mapping, keys: Sequence[str]):
    """The mapping that holds ``keys[-1]``, or None."""
    cur = doc
    for k in keys[:-1]:
        cur = cur.get(k) if isinstance(cur, Mapping) else None
    return cur if isinstance(cur, Mapping) else None


def link_tables(doc: Mapping, out: str | os.PathLike) -> tuple[dict, list[Path]]:
    """A copy of ``doc`` whose table fields are links, and the table files written into ``out``.

    A table field that holds a non-empty list of entries becomes a link to ``NAME.csv.gz`` (the
    field's keys joined by ``_``); an empty list, ``null`` or a link stays as it is.
    """
    out = Path(out)
    linked = dict(doc)
    files = []
    for keys in table_fields(doc):
        holder = _parent(linked, keys)
        rows = holder.get(keys[-1]) if holder is not None else None
        if not (isinstance(rows, list) and rows and all(isinstance(r, Mapping) for r in rows)):
            continue
        # copy the path down to the table, so that the caller's document keeps its rows
        cur = linked
        for k in keys[:-1]:
            cur[k] = dict(cur[k])
            cur = cur[k]
        path = out / table_file(keys)
        cur[keys[-1]] = write_table(rows, path)
        files.append(path)
    return linked, files


def _resolve(node, base: Path, depth: int = 0):
    if is_link(node):
        return read_table(node, base)
    if isinstance(node, Mapping) and depth < 3:
        return {k: _resolve(v, base, depth + 1) for k, v in node.items()}
    return node


def load_report(path: str | os.PathLike) -> dict:
    """The ``report.json`` document of a report folder (or file), with linked tables read back.

    A report written before tables were linked holds its rows inline and is returned as it is,
    so a reader of ``doc["spiral_windows"]`` gets the list of entries either way.

    Raises
    ------
    GeomtrajError
        When ``report.json`` is missing or not JSON, or a linked table is missing or damaged.
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        doc = json.loads(file.read_text("utf-8"))
    except OSError as exc:
        raise GeomtrajError(f"{file}: cannot read the report ({exc.strerror})") from None
    except ValueError as exc:
        raise GeomtrajError(f"{file}: not a JSON report ({exc})") from None
    if not isinstance(doc, dict):
        raise GeomtrajError(f"{file}: not a report (a JSON {type(doc).__name__})")
    return {k: _resolve(v, file.parent, 1) for k, v in doc.items()}
