"""Click logs read as streams: plain, gzip (``.gz``) or one-member zip (``.zip``) files, and CSV
records that may hold quoted commas and line breaks.

Nothing here reads a whole file: a 10 GB log goes through in constant memory. Progress is
measured in bytes of the file on disk, so a compressed file needs no first pass to count lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.core.errors import FraudError

COMPRESSED = (".gz", ".zip")
# csv refuses a field over 128 KiB by default; a log line may be longer and the detector bounds it.
csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class Source:
    stream: IO[bytes]  # the decompressed bytes
    name: str  # the name of what is inside: the file's, less ``.gz``, or the zip member's
    size: int  # bytes of the file on disk
    read_so_far: Callable[[], int]  # bytes of the file on disk consumed so far


@contextmanager
def open_source(path: Path) -> Iterator[Source]:
    if not path.is_file():
        raise FraudError(f"no such file: {path}")
    size = path.stat().st_size
    with path.open("rb") as raw:
        suffix = path.suffix.lower()
        if suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield Source(stream, path.stem, size, raw.tell)
        elif suffix == ".zip":
            try:
                archive = zipfile.ZipFile(raw)
            except zipfile.BadZipFile as err:
                raise FraudError(f"{path}: not a zip file: {err}") from None
            with archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise FraudError(f"{path}: a .zip must hold exactly one file, it holds {len(members)}")
                with archive.open(members[0]) as stream:
                    yield Source(stream, Path(members[0].filename).name, size, raw.tell)
        else:
            yield Source(raw, path.name, size, raw.tell)


@dataclass(frozen=True)
class CsvRecord:
    line: int  # the line the record starts on
    cells: list[str] | None  # None: the record is not valid CSV
    error: str = ""


def csv_records(stream: IO[bytes]) -> Iterator[CsvRecord]:
    """Every CSV record after wherever the stream stands, with the line it starts on.

    Blank lines are skipped. After a malformed record reading goes on with the next line.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(text, strict=True)
    ended = 0  # the last physical line of the previous record
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield CsvRecord(ended + 1, None, f"not a CSV record: {err}")
            ended = reader.line_num
            continue
        start, ended = ended + 1, reader.line_num
        if cells and cells != [""]:
            yield CsvRecord(start, cells)


def csv_header(records: Iterator[CsvRecord]) -> list[str]:
    """The first record as a header: every column named, no name twice."""
    first = next(records, None)
    if first is None or first.cells is None:
        raise FraudError(f"line 1: not a CSV header{': ' + first.error if first else ' (empty file)'}")
    header = first.cells
    if "" in header:
        raise FraudError("line 1: the CSV header must name every column")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise FraudError(f"line 1: the CSV header repeats {', '.join(repeated)}")
    return header


def record_text(cells: list[str]) -> str:
    """A record written back as one CSV line, for a dead letter's copy."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()
