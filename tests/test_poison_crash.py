"""Poison pills that kill the process (no exception to isolate): real detector processes that die on
a marked click, restarted until the click is dead-lettered ``max_attempts``, every other click judged;
and kills at one offset, as many as FRAUD_MAX_ATTEMPTS allows, that dead-letter nothing.

Each runs twice: with the marked click in the first batch a member begins after taking the partition
(its attempt counted by ``fraud_attempt``), and in batches of BEHIND_A_COMMIT, behind batches the first
member commits (its attempt counted by the step that committed the batch before: the member then sends
nothing before it dies, just as if it had died between that step and beginning the next batch)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from tests.accounting import check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.outputs import read_partitions, stage_drained
from tests.poison_agent import MARK
from tests.procs import FAST_RECOVERY, PROJECT_ROOT, kill_and_settle, stop_all, wait_until

CLICKS = 60
POISON_AT = 30
LIMIT = Settings().max_attempts
# Batches this small put the marked click (the fifth of its partition) behind two committed batches.
BEHIND_A_COMMIT = 2
BATCH_SIZES = pytest.mark.parametrize("batch_size", [Settings().batch_size, BEHIND_A_COMMIT])


def spawn_poisoned(settings: Settings, name: str, log: Path, batch_size: int, **env: str) -> subprocess.Popen[bytes]:
    """A detector process of tests/poison_agent.py (POISON_ACTION, POISON_HANG_FILE in `env`)."""
    full_env = {**os.environ, "FRAUD_REDIS_URL": settings.redis_url, **FAST_RECOVERY,
                "FRAUD_BATCH_SIZE": str(batch_size), **env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.poison_agent", name], env=full_env,
                                cwd=PROJECT_ROOT, stdout=out, stderr=out)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_all(started)


async def marked_clicks(settings: Settings) -> tuple[list[str], str, int]:
    """Clicks of CLICKS devices, the POISON_AT-th marked, routed: (ids, the marked one's id, its partition).
    Its partition holds clicks before and after it, so both sides of it are checked, and at least
    two batches of BEHIND_A_COMMIT before it."""
    clicks = [["device_id", f"dev-{i}", "ip", f"192.0.2.{i}"] + ([MARK.decode(), "1"] if i == POISON_AT else [])
              for i in range(CLICKS)]
    unit = partition_of(f"dev-{POISON_AT}", settings.partitions)
    same = [i for i in range(CLICKS) if partition_of(f"dev-{i}", settings.partitions) == unit]
    assert 2 * BEHIND_A_COMMIT <= same.index(POISON_AT) < len(same) - 1, same
    ids = xadd_all(settings, clicks)
    await run_burst(settings, "router")
    return ids, ids[POISON_AT], unit


def attempt_record(client: redis.Redis, settings: Settings, unit: int) -> dict[bytes, bytes]:
    return client.hgetall(Keys(settings.namespace).partition(unit).lease("detector"))


def stop_gracefully(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    assert process.wait(30) == 0, "the surviving detector did not stop cleanly"


@BATCH_SIZES
async def test_a_click_that_kills_its_process_is_dead_lettered_after_max_attempts(
        settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[Any]], batch_size: int) -> None:
    ids, poison, _ = await marked_clicks(settings)
    log = tmp_path / "agents.log"
    deaths = 0
    with redis.Redis.from_url(settings.redis_url) as client:
        def poison_dead_lettered() -> bool:
            return bool(read_partitions(client, settings, "dead")) and stage_drained(client, settings, "detector")

        # Each member dies on the click as the next one takes the partition over: LIMIT times with its
        # batch, LIMIT times with the click alone; the next one dead-letters it and goes on.
        for number in range(2 * LIMIT + 1):
            member = spawn_poisoned(settings, f"member-{number}", log, batch_size, POISON_ACTION="exit")
            processes.append(member)
            wait_until(lambda m=member: m.poll() is not None or poison_dead_lettered(), 60,
                       f"member-{number} to die on the marked click, or the click to be dead-lettered")
            if member.poll() is None:
                break
            assert member.returncode == 1, log.read_text()[-3000:]
            deaths += 1
        assert deaths == 2 * LIMIT, log.read_text()[-3000:]
        stop_gracefully(member)
    await run_burst(settings, "aggregator")
    outcomes = check_exactly_once(settings)
    assert set(outcomes.dead) == {poison.encode()}
    letter = outcomes.dead[poison.encode()]
    assert letter[b"reason"] == f"max_attempts: the process applying it ended {LIMIT} times without committing".encode()
    assert letter[b"stage"] == b"detector" and letter[MARK] == b"1"
    assert set(outcomes.verdicts) == {i.encode() for i in ids} - {poison.encode()}


@BATCH_SIZES
@pytest.mark.parametrize("kills", [LIMIT - 1, LIMIT])
async def test_kills_at_one_offset_up_to_max_attempts_dead_letter_no_good_click(
        settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[Any]], kills: int,
        batch_size: int) -> None:
    ids, _, unit = await marked_clicks(settings)
    log = tmp_path / "agents.log"
    with redis.Redis.from_url(settings.redis_url) as client:
        for number in range(kills):
            # The member stands still inside the batch of the marked click (a good click here): its
            # attempt is counted (by the member, or by its step that committed the batch before) and it
            # has committed nothing, for certain, when it is SIGKILLed.
            hang = tmp_path / f"hang-{number}"
            member = spawn_poisoned(settings, f"member-{number}", log, batch_size,
                                    POISON_ACTION="hang", POISON_HANG_FILE=str(hang))
            processes.append(member)
            wait_until(hang.exists, 60, f"member-{number} to stand still in the marked click's batch")
            # In small batches every member stands still behind batches the first one committed.
            assert (hang.read_text() == "0-0") == (batch_size != BEHIND_A_COMMIT), hang.read_text()
            kill_and_settle(client, member)
            record = attempt_record(client, settings, unit)
            assert (record[b"attempt_at"], int(record[b"attempts"])) == (hang.read_text().encode(), number + 1)
        survivor = spawn_poisoned(settings, "survivor", log, batch_size)
        processes.append(survivor)
        wait_until(lambda: stage_drained(client, settings, "detector"), 60, "the survivor to judge every click")
        stop_gracefully(survivor)
        # LIMIT attempts at an offset are allowed whole; one more makes its entries suspects, applied alone.
        assert (b"suspects_to" in attempt_record(client, settings, unit)) == (kills == LIMIT)
    await run_burst(settings, "aggregator")
    outcomes = check_exactly_once(settings)
    assert not outcomes.dead
    assert set(outcomes.verdicts) == {i.encode() for i in ids}
