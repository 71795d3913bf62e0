"""``fraud acl``: the ACL users of every role, printed for review, written as an ACL file, or
applied to a running server (as admin)."""

from __future__ import annotations

import argparse
import os
import sys

from redis.asyncio import RedisCluster

from pipeline.client.connection import open_redis
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.acl import ROLES, acl_file, role_rules, setuser_words


def password_variable(role: str) -> str:
    return f"FRAUD_{role.upper()}_PASSWORD"


def passwords_from_env() -> dict[str, str]:
    """Each role's password from FRAUD_<ROLE>_PASSWORD; a role without one is switched off."""
    return {role: os.environ[password_variable(role)] for role in ROLES if os.environ.get(password_variable(role))}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("acl", help="the ACL user of every role: print, write an ACL file, or apply")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--file", metavar="PATH",
                      help="write an ACL file (aclfile) with the passwords of FRAUD_<ROLE>_PASSWORD, hashed")
    mode.add_argument("--apply", action="store_true",
                      help="ACL SETUSER every role on the server of FRAUD_REDIS_URL (as admin)")
    parser.set_defaults(run=_acl)


async def _acl(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    if args.file:
        passwords = passwords_from_env()
        if not passwords:
            raise FraudError("no FRAUD_<ROLE>_PASSWORD is set: every user would be off")
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(acl_file(keys, passwords))
        print(f"wrote {args.file}: users {', '.join(sorted(passwords))}; "
              f"off: {', '.join(r for r in ROLES if r not in passwords) or 'none'}", file=sys.stderr)
        return 0
    if args.apply:
        passwords = passwords_from_env()
        client = await open_redis(settings)
        # Users are each node's own: on a cluster every node, replicas too, gets them (redis-py
        # would send ACL SETUSER to one node at random).
        every_node = {"target_nodes": client.get_nodes()} if isinstance(client, RedisCluster) else {}
        try:
            for role in ROLES:
                if role not in passwords:
                    # Never switch a user off from here: it may be the admin running this.
                    print(f"{role}: left as it is (no {password_variable(role)})")
                    continue
                await client.execute_command("ACL", "SETUSER", *setuser_words(role, keys, passwords[role]),
                                             **every_node)
                print(f"{role}: set")
        finally:
            await client.aclose()
        return 0
    for role in ROLES:
        print(f"ACL SETUSER {role} reset on >${{{password_variable(role)}}} {' '.join(role_rules(role, keys))}")
    return 0
