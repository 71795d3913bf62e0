"""Column mappings, each form on its own: device from one or joined columns, ip as text or an
integer, ts in every format, transaction ids, pass-through and labels; a file, and flags over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.main import build_parser
from pipeline.cli.mapping_args import mapping_of
from pipeline.core.errors import FraudError
from pipeline.ops.mapping import MappingError, RowMapper, mapping_from

HEADER = ["ip", "app", "device", "os", "channel", "click_time", "attributed_time", "is_attributed"]
ROW = ["83230", "3", "1", "13", "379", "2017-11-06 14:32:21", "", "0"]
# 2017-11-06 14:32:21 UTC
ROW_MS = 1_509_978_741_000


def mapped(row: list[str], header: list[str] = HEADER, **options: object) -> dict[str, str]:
    result = RowMapper(mapping_from({"device_id": "device", "ip": "ip", **options}), header)(row)
    return dict(zip(result.fields[::2], result.fields[1::2], strict=True))


def test_device_from_one_column_or_several_joined() -> None:
    assert mapped(ROW)["device_id"] == "1"
    assert mapped(ROW, device_id=["ip", "device", "os"])["device_id"] == "83230:1:13"
    # An empty device cell leaves the field out: the detector dead-letters it as missing_field.
    assert "device_id" not in mapped(["1", "3", "", "13", "9", "", "", "0"])


def test_ip_integer_is_ipv4_and_text_goes_as_it_is() -> None:
    assert mapped(ROW)["ip"] == "0.1.69.30"
    assert mapped(["4294967295", *ROW[1:]])["ip"] == "255.255.255.255"
    assert mapped(["4294967296", *ROW[1:]])["ip"] == "4294967296"  # not an address: the detector says so
    assert mapped(["2001:db8::1", *ROW[1:]])["ip"] == "2001:db8::1"
    assert mapped(["10.0.0.7", *ROW[1:]])["ip"] == "10.0.0.7"


@pytest.mark.parametrize(("value", "fmt", "tz", "expected"), [
    ("1509978741", "epoch_s", "UTC", ROW_MS),
    ("1509978741.25", "epoch_s", "UTC", ROW_MS + 250),
    ("1509978741123", "epoch_ms", "UTC", ROW_MS + 123),
    ("1509978741123456", "epoch_us", "UTC", ROW_MS + 123),
    ("2017-11-06T14:32:21Z", "iso", "UTC", ROW_MS),
    ("2017-11-06T22:32:21+08:00", "iso", "UTC", ROW_MS),
    ("2017-11-06 22:32:21.5", "iso", "Asia/Shanghai", ROW_MS + 500),
    ("2017-11-06 14:32:21", "%Y-%m-%d %H:%M:%S", "UTC", ROW_MS),
    ("06/11/2017 15:32:21", "%d/%m/%Y %H:%M:%S", "Europe/Paris", ROW_MS),
    ("06/11/2017 14:32:21 +0000", "%d/%m/%Y %H:%M:%S %z", "Asia/Tokyo", ROW_MS),
])
def test_ts_formats(value: str, fmt: str, tz: str, expected: int) -> None:
    row = [*ROW[:5], value, *ROW[6:]]
    assert mapped(row, ts="click_time", ts_format=fmt, tz=tz)["ts"] == str(expected)


@pytest.mark.parametrize(("value", "fmt"), [("yesterday", "iso"), ("14:32", "%Y-%m-%d %H:%M:%S"),
                                            ("-5", "epoch_ms"), ("1e9", "epoch_s")])
def test_unreadable_time_is_a_row_error(value: str, fmt: str) -> None:
    with pytest.raises(MappingError, match="ts"):
        mapped([*ROW[:5], value, *ROW[6:]], ts="click_time", ts_format=fmt)


def test_transaction_id_pass_through_and_labels() -> None:
    fields = mapped(ROW, transaction_id=["ip", "click_time"], **{"pass": ["app", "attributed_time"]})
    # An empty pass-through cell is an absent field, as in any CSV trace.
    assert fields == {"device_id": "1", "ip": "0.1.69.30", "transaction_id": "83230:2017-11-06 14:32:21", "app": "3"}
    by_value = RowMapper(mapping_from({"device_id": "device", "ip": "ip", "label": "is_attributed",
                                       "fraud_values": ["0"]}), HEADER)
    assert by_value(ROW).fraud is True
    assert by_value([*ROW[:7], "1"]).fraud is False
    by_absence = RowMapper(mapping_from({"device_id": "device", "ip": "ip", "label": "attributed_time",
                                         "fraud_if_empty": True}), HEADER)
    assert by_absence(ROW).fraud is True
    assert by_absence([*ROW[:6], "2017-11-06 15:00:00", "1"]).fraud is False


def test_mapping_mistakes_are_named() -> None:
    with pytest.raises(FraudError, match="no column 'click_tme'"):
        RowMapper(mapping_from({"device_id": "device", "ip": "ip", "ts": "click_tme"}), HEADER)
    with pytest.raises(FraudError, match="unknown time zone"):
        mapping_from({"device_id": "device", "ip": "ip", "tz": "Mars/Olympus"})
    with pytest.raises(FraudError, match="ts_format"):
        mapping_from({"device_id": "device", "ip": "ip", "ts_format": "seconds"})
    with pytest.raises(FraudError, match="unknown mapping option"):
        mapping_from({"device_id": "device", "ip": "ip", "device": "x"})
    with pytest.raises(MappingError, match="expected 8 columns, got 7"):
        mapped(ROW[:7])


def test_a_mapping_file_with_flags_over_it(tmp_path: Path) -> None:
    file = tmp_path / "talkingdata.toml"
    file.write_text('device_id = ["ip", "device", "os"]\nip = "ip"\nts = "click_time"\n'
                    'ts_format = "%Y-%m-%d %H:%M:%S"\npass = ["app", "channel"]\n')
    args = build_parser().parse_args(["replay", "log.csv", "--mapping", str(file), "--pass", "channel",
                                      "--tz", "Asia/Shanghai"])
    mapping = mapping_of(args)
    assert mapping is not None
    assert (mapping.device_id, mapping.passthrough, mapping.tz) == (("ip", "device", "os"), ("channel",),
                                                                    "Asia/Shanghai")
    assert mapping_of(build_parser().parse_args(["replay", "log.csv"])) is None


def test_the_example_mapping_and_fraud_given_on_the_command_line() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "talkingdata.toml"
    args = build_parser().parse_args(["backtest", "log.csv", "--mapping", str(example)])
    mapping = mapping_of(args)
    assert mapping is not None
    assert (mapping.device_id, mapping.label, mapping.fraud_values) == (("ip", "device", "os"), "is_attributed",
                                                                        ("0",))
    assert RowMapper(mapping, HEADER)(ROW).fields[:6] == ["device_id", "83230:1:13", "ip", "0.1.69.30",
                                                         "ts", str(ROW_MS)]
