"""The wire contract is written once: the README and every rejection in the code agree with schemas/."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.click import KNOWN_FIELDS, RESERVED_FIELDS
from schemas.dead_letter import REASON_CODES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
README = (PROJECT_ROOT / "README.md").read_text()
# A reason written in code: an InvalidClick/InvalidVerdict/Rejection message, or a Lua dead letter's.
REASON_IN_CODE = re.compile(r"(?:Invalid(?:Click|Verdict)|Rejection)\([^\"']*f?[\"']([a-z_]+): "
                            r"|dead_letter\([^\n]*'([a-z_]+): ")


def readme_section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n## ", start)]


def test_readme_lists_exactly_the_reason_codes() -> None:
    dead = readme_section("**Dead letters**")
    codes = dead[dead.index("Reasons start with a stable code"):]
    listed = re.findall(r"`([a-z_]+)`", codes[:codes.index("\n\n")])
    assert listed == list(REASON_CODES)


def test_every_reason_the_code_writes_has_a_listed_code() -> None:
    sources = [*PROJECT_ROOT.glob("schemas/*.py"), *PROJECT_ROOT.glob("agents/*.py"),
               *PROJECT_ROOT.glob("agents/*.lua"), *PROJECT_ROOT.glob("pipeline/**/*.py")]
    found = {code for path in sources for match in REASON_IN_CODE.finditer(path.read_text())
             for code in match.groups() if code}
    assert found, "the pattern found no reason at all: it is out of date"
    assert found <= set(REASON_CODES), found - set(REASON_CODES)


def test_readme_wire_table_names_the_known_and_reserved_fields() -> None:
    contract = readme_section("## The wire contract")
    table = contract[contract.index("| field |"):contract.index("**Verdicts**")]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert set(rows) == set(KNOWN_FIELDS)
    for name in RESERVED_FIELDS:
        assert f"`{name}`" in table, f"the table does not say {name} is reserved"
