"""Which errors are Redis's state (waited out by the reading tools) and which are a request's (raised)."""

from __future__ import annotations

import pytest
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.client.outage import Outage, error_text, is_unavailable


@pytest.mark.parametrize("err", [
    RedisConnectionError("Connection closed by server."),
    RedisTimeoutError("Timeout reading from socket"),
    TimeoutError("no answer within 5 s"),
    ConnectionRefusedError(111, "Connect call failed"),
    # As redis-py parses them: the code taken off the message into status_code.
    BusyLoadingError("Redis is loading the dataset in memory", status_code="LOADING"),
    ReadOnlyError("You can't write against a read only replica.", status_code="READONLY"),
    ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
    ResponseError("NOGROUP No such key 'clicks:raw' or consumer group 'detector'"),
])
def test_server_state_is_unavailable(err: Exception) -> None:
    assert is_unavailable(err)


@pytest.mark.parametrize("err", [
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("unknown command 'XINFO'"),
    ValueError("a bug"),
])
def test_request_errors_are_not(err: Exception) -> None:
    assert not is_unavailable(err)


def test_error_text_keeps_the_servers_code() -> None:
    assert error_text(BusyLoadingError("Redis is loading", status_code="LOADING")) == "LOADING Redis is loading"
    assert error_text(TimeoutError()) == "TimeoutError"


async def test_an_outage_records_its_start_and_its_end() -> None:
    outage = Outage()

    async def fails() -> int:
        raise RedisConnectionError("Connection closed by server.")

    async def works() -> int:
        return 7

    assert await outage.read(fails()) is None
    assert (outage.ongoing, outage.began, outage.reason) == (True, True, "Connection closed by server.")
    assert outage.describe().startswith("unreachable since ")
    assert await outage.read(fails()) is None
    assert (outage.ongoing, outage.began) == (True, False)
    assert await outage.read(works()) == 7
    assert not outage.ongoing and outage.ended_after_ms is not None and outage.ended_after_ms >= 0
    assert await outage.read(works()) == 7
    assert outage.ended_after_ms is None

    async def bug() -> int:
        raise KeyError("groups")

    with pytest.raises(KeyError):
        await outage.read(bug())
