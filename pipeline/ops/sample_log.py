"""A labelled click log in the column layout of the public TalkingData AdTracking data set, made
here from a seed (never downloaded): ``ip,app,device,os,channel,click_time,attributed_time,is_attributed``.

``ip`` is an integer id, ``click_time`` UTC text to the second, rows in click-time order, and no
device id: a device is its ``ip``+``device``+``os``. People click now and then and often go on to
install (``is_attributed`` 1, with an ``attributed_time``); now and then one clicks twice in a
row. Bots click in bursts every 1-3 s and never install. The same seed and row count give the
same bytes, compressed or not.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

HEADER = ("ip", "app", "device", "os", "channel", "click_time", "attributed_time", "is_attributed")
# 2017-11-06 14:00:00 UTC, where the public data set begins.
DEFAULT_START_S = 1_509_976_800
PEOPLE = 5_000
BOTS = 12
PEOPLE_CLICKS_PER_S = 4.0
INSTALL_RATE = 0.6
DOUBLE_CLICK_RATE = 0.03
# A bot rests this long on average between bursts, and a burst lasts this many clicks.
BOT_REST_S = 120
BOT_BURST = (5, 30)

Device = tuple[int, int, int]  # ip, device, os


def _people(rng: random.Random) -> list[Device]:
    return [(rng.randint(1, 300_000), rng.choice((1, 1, 1, 2, 3)), rng.randint(1, 40)) for _ in range(PEOPLE)]


def sample_rows(seed: int, rows: int, start_s: int = DEFAULT_START_S) -> Iterator[list[str]]:
    """``rows`` records in click-time order (without the header)."""
    rng = random.Random(f"talkingdata-sample:{seed}")
    people = _people(rng)
    bots = [(rng.randint(300_001, 365_000), 1, rng.randint(1, 40)) for _ in range(BOTS)]
    bot_app = [rng.randint(1, 50) for _ in bots]
    # Per bot: the next second it clicks, and how many clicks its burst has left.
    next_click = [start_s + rng.randint(0, BOT_REST_S) for _ in bots]
    burst_left = [rng.randint(*BOT_BURST) for _ in bots]
    made = 0
    second = start_s
    while made < rows:
        batch: list[list[str]] = []
        for _ in range(_poisson(rng, PEOPLE_CLICKS_PER_S)):
            person = rng.choice(people)
            app, channel = rng.randint(1, 50), rng.randint(100, 500)
            installs = rng.random() < INSTALL_RATE
            batch.append(_row(person, app, channel, second, rng.randint(60, 3_600) if installs else None))
            if rng.random() < DOUBLE_CLICK_RATE:
                batch.append(_row(person, app, channel, second + rng.randint(0, 1), None))
        for b, bot in enumerate(bots):
            if next_click[b] <= second:
                batch.append(_row(bot, bot_app[b], 213, second, None))
                burst_left[b] -= 1
                if burst_left[b] > 0:
                    next_click[b] = second + rng.randint(1, 3)
                else:
                    burst_left[b] = rng.randint(*BOT_BURST)
                    next_click[b] = second + int(rng.expovariate(1 / BOT_REST_S)) + 1
        # A double click may fall in the next second: the file stays in click-time order.
        batch.sort(key=lambda row: row[5])
        yield from batch[: rows - made]
        made += min(len(batch), rows - made)
        second += 1


def _row(device: Device, app: int, channel: int, second: int, install_after_s: int | None) -> list[str]:
    ip, kind, os = device
    attributed = "" if install_after_s is None else _time_text(second + install_after_s)
    return [str(ip), str(app), str(kind), str(os), str(channel), _time_text(second), attributed,
            "0" if install_after_s is None else "1"]


def _time_text(second: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S")


def _poisson(rng: random.Random, mean: float) -> int:
    """Events in one second of a Poisson process of rate ``mean``."""
    count, elapsed = 0, rng.expovariate(mean)
    while elapsed < 1.0:
        count += 1
        elapsed += rng.expovariate(mean)
    return count


@contextmanager
def _writer(path: Path) -> Iterator[IO[str]]:
    """A text file, gzip-compressed (with no timestamp, so bytes repeat) or zipped by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed, \
                io.TextIOWrapper(packed, encoding="utf-8", newline="") as text:
            yield text
    elif suffix == ".zip":
        name = path.stem if path.stem.endswith(".csv") else path.stem + ".csv"
        # A fixed date, so that the same rows give the same bytes.
        member = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        member.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(path, "w") as archive, archive.open(member, "w") as packed, \
                io.TextIOWrapper(packed, encoding="utf-8", newline="") as text:
            yield text
    else:
        with path.open("w", encoding="utf-8", newline="") as text:
            yield text


def write_sample(path: Path, seed: int, rows: int, start_s: int = DEFAULT_START_S) -> None:
    with _writer(path) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(sample_rows(seed, rows, start_s))
