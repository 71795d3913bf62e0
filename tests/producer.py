"""A producer thread for fault tests: XADDs numbered clicks in batches through server restarts."""

from __future__ import annotations

import threading
import time
from collections import Counter

import redis

from pipeline.core.keys import Keys
from tests.accounting import Outcomes

BATCH = 500


class Producer(threading.Thread):
    """XADDs batches; a batch whose reply did not arrive is sent again (its outcome is unknown).

    Click i is ``tx-i`` of device ``dev-{i % 2000}``. It sends ``clicks`` clicks, or, with None,
    goes on until ``finish()`` (so that traffic flows for certain while a test breaks things).
    """

    def __init__(self, url: str, clicks: int | None, pause_s: float = 0.01) -> None:
        # A daemon: a test that fails while Redis is down leaves it retrying its batch, and the
        # session must still end.
        super().__init__(daemon=True)
        self.url = url
        self.clicks = clicks
        self.pause_s = pause_s
        self.acknowledged: set[int] = set()
        self.retried_batches = 0
        self._finish = threading.Event()

    def finish(self) -> None:
        """Stop after the batch in hand (open-ended producers)."""
        self._finish.set()

    def _more(self, sent: int) -> bool:
        return not self._finish.is_set() if self.clicks is None else sent < self.clicks

    def run(self) -> None:
        raw = Keys().raw
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            first = 0
            while self._more(first):
                numbers = range(first, first + BATCH)
                while True:
                    try:
                        pipe = client.pipeline(transaction=False)
                        for i in numbers:
                            pipe.xadd(raw, {"device_id": f"dev-{i % 2000}", "ip": "192.0.2.1",
                                            "transaction_id": f"tx-{i}"})
                        pipe.execute()
                        break
                    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                        self.retried_batches += 1
                        time.sleep(0.2)
                self.acknowledged.update(numbers)
                first += BATCH
                time.sleep(self.pause_s)
        finally:
            client.close()


def check_each_click_judged_once(out: Outcomes, producer: Producer) -> None:
    """Every click the producer sent has exactly one verdict; its extra entries are only re-sent batches."""
    sent = len(producer.acknowledged)
    assert producer.acknowledged == set(range(sent))
    per_click = Counter(int(v[b"transaction_id"].removeprefix(b"tx-")) for v in out.verdicts.values())
    assert set(per_click) == set(range(sent)), "an acknowledged click has no verdict"
    assert max(per_click.values()) == 1
    assert len(out.dead) == 0
    assert len(out.duplicates) == len(out.raw) - sent  # retried batches whose first XADD had landed
