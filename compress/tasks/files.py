"""Reading task data files: UTF-8 text and JSON rows (a JSON list or JSON lines), each row with the
location an error message names (`path:line` for JSON lines, `path row N` for a list)."""

from __future__ import annotations

import json
from pathlib import Path

from compress.core.errors import DataError


def read_text(path: str | Path, what: str = "data file") -> str:
    """The text of a UTF-8 file (a leading BOM dropped); a missing file, a folder or other bytes is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} not found; check --data-dir / $COMPRESS_DATA_DIR or the file flags")
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory; pass the file itself (e.g. {path}/dev.tsv)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # Decoded from the bytes in one go, so e.start is the offset in the file (not in a read buffer).
        raise DataError(
            f"{what} {path} is not UTF-8 text (byte {e.start}: 0x{raw[e.start]:02x}); re-save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
        ) from e
    return text.removeprefix("\ufeff")


def json_rows(doc, text: str, path: str | Path) -> list[tuple[str, object]]:
    """(location, row) pairs of a JSON list (`doc`, already parsed) or, when `doc` is None, of JSON lines."""
    if isinstance(doc, list):
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(doc)]
    if isinstance(doc, dict):  # a JSON lines file of one row parses as one object
        return [(f"{path}:1", doc)]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n} is not JSON ({e.msg}); write one JSON object per line") from e
    if not rows:
        raise DataError(f"data file {path} is empty")
    return rows


def parse_json(text: str):
    """The parsed document, or None when the text is JSON lines (or not JSON at all: json_rows then says where)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def read_tsv(path: str | Path) -> dict[str, list[str]]:
    """Columns of a GLUE-style tsv: header row, tabs, no quoting (MRPC has unescaped double quotes),
    optional BOM; a short row is a DataError naming its line."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) < 2:
        raise DataError(f"data file {path} is empty (no rows after the header)")
    header = rows[0]
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{n} has {len(row)} fields, the header has {len(header)}; fix the row")
    return {h: [row[i] for row in rows[1:]] for i, h in enumerate(header)}
