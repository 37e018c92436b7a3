"""``mgfast users``: user records for basic authentication, in the etcd the server reads.

    mgfast users hash [--password-stdin]
    mgfast users put CONFIG USERNAME [--password-stdin | --hash PHC] [--labels RULE]
    mgfast users delete CONFIG USERNAME
    mgfast users list CONFIG [--json]

CONFIG is the server's own JSON config: its ``auth.basic.etcd`` (urls, tls, credentials, path,
data_format) says where records go and in which format, so the tool and the server cannot
disagree. The password is prompted for (twice) on a terminal, else read as one line from
standard input; it never appears on the command line. RULE is ``allowed_routing_labels`` as
JSON, e.g. ``'{"set": "cam-north"}'``. Exit status: 0 done, 1 no such user, 2 error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

import orjson

from mgfast.auth import records, rules
from mgfast.auth.config import BasicAuthConfig
from mgfast.auth.etcd import EtcdClient, EtcdError, check_tls, describe
from mgfast.auth.passwords import hash_password
from mgfast.auth.records import RecordError, UserRecord

EXIT_OK, EXIT_MISSING, EXIT_ERROR = 0, 1, 2

WORKFLOW = """\
a user for the server configured in server.json (auth.basic.etcd):
  mgfast users put server.json user1                 # prompts for the password
  mgfast users put server.json cam-north --labels '{"set": "north"}'
  mgfast users list server.json
  mgfast users delete server.json user1
a hash to store by other means (etcdctl put /users/user1 '{"password_hash": "..."}'):
  mgfast users hash
"""


class UsersError(Exception):
    """A failure the user can fix; the message says how."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgfast users", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Basic-authentication users in etcd.", epilog=WORKFLOW)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sp = sub.add_parser("hash", help="print an argon2id hash of a password")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password from standard input (default on a pipe)")
    sp = sub.add_parser("put", help="create or replace a user's record")
    sp.add_argument("config", help="the server's JSON config (auth.basic.etcd)")
    sp.add_argument("username")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (default on a pipe)")
    how.add_argument("--hash", metavar="PHC", help="store this argon2 hash as it is")
    sp.add_argument("--labels", metavar="RULE",
                    help='allowed_routing_labels as JSON, e.g. \'{"set": "north"}\' '
                         "(default: all labels allowed)")
    sp = sub.add_parser("delete", help="delete a user's record")
    sp.add_argument("config")
    sp.add_argument("username")
    sp = sub.add_parser("list", help="list the users and their label rules")
    sp.add_argument("config")
    sp.add_argument("--json", action="store_true", help="one JSON document")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "hash":
            print(hash_password(_password(args.password_stdin)))
            return EXIT_OK
        auth = _auth_config(args.config)
        return asyncio.run(_COMMANDS[args.command](auth, args))
    except UsersError as exc:
        print(f"mgfast users: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise UsersError("no password on standard input; pipe one line, e.g. "
                             "`printf '%s\\n' \"$PW\" | mgfast users ...`")
        return line
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UsersError("the two passwords differ; run the command again")
    if not first:
        raise UsersError("empty password; type one")
    return first


def _auth_config(path: str) -> BasicAuthConfig:
    from mgfast.config.errors import ConfigError
    from mgfast.config.loader import load_server_config
    try:
        config = load_server_config(path)
    except ConfigError as exc:
        raise UsersError(str(exc)) from None
    if config.auth is None:
        raise UsersError(f"{path}: auth: the config has no auth.basic section, so the server "
                         f"reads no users; add auth.basic.etcd (see the README)")
    return config.auth


async def _connected(auth: BasicAuthConfig) -> EtcdClient:
    try:
        check_tls(auth.etcd)
    except ValueError as exc:
        raise UsersError(str(exc)) from None
    client = EtcdClient(auth.etcd)
    try:
        await client.connect()
    except EtcdError as exc:
        await client.close()
        raise UsersError(f"cannot reach etcd at {client.endpoint}: {describe(exc)}; check "
                         f"auth.basic.etcd urls, tls and credentials") from None
    return client


def _key(auth: BasicAuthConfig, username: str) -> bytes:
    if not username or ":" in username:
        raise UsersError(f"{username!r} cannot be a basic-auth username (empty, or has a colon)")
    return (auth.etcd.path + username).encode()


async def _put(auth: BasicAuthConfig, args: argparse.Namespace) -> int:
    key = _key(auth, args.username)
    rule = None
    if args.labels is not None:
        try:
            rule = rules.parse(orjson.loads(args.labels))
        except orjson.JSONDecodeError as exc:
            raise UsersError(f"--labels is not JSON ({exc}); write e.g. '{{\"set\": \"north\"}}'")
        except rules.RuleError as exc:
            raise UsersError(f"--labels: {exc}") from None
    if args.hash is not None:
        password_hash = args.hash
        if not password_hash.startswith("$argon2"):
            raise UsersError("--hash must be an argon2 PHC string ($argon2id$v=19$...)")
    else:
        password_hash = hash_password(_password(args.password_stdin))
    value = records.dump(UserRecord(password_hash, rule), auth.etcd.data_format)
    client = await _connected(auth)
    try:
        revision = await client.put(key, value)
    except EtcdError as exc:
        raise UsersError(f"etcd put {key.decode()} failed: {describe(exc)}") from None
    finally:
        await client.close()
    print(f"put {key.decode()} (revision {revision})")
    return EXIT_OK


async def _delete(auth: BasicAuthConfig, args: argparse.Namespace) -> int:
    key = _key(auth, args.username)
    client = await _connected(auth)
    try:
        deleted = await client.delete(key)
    except EtcdError as exc:
        raise UsersError(f"etcd delete {key.decode()} failed: {describe(exc)}") from None
    finally:
        await client.close()
    if not deleted:
        print(f"mgfast users: no user {args.username!r} under {auth.etcd.path}", file=sys.stderr)
        return EXIT_MISSING
    print(f"deleted {key.decode()}")
    return EXIT_OK


async def _list(auth: BasicAuthConfig, args: argparse.Namespace) -> int:
    client = await _connected(auth)
    prefix = auth.etcd.path.encode()
    try:
        revision, entries = await client.range_prefix(prefix)
    except EtcdError as exc:
        raise UsersError(f"etcd range {auth.etcd.path} failed: {describe(exc)}") from None
    finally:
        await client.close()
    users = []
    for entry in entries:
        name = entry.key[len(prefix):].decode(errors="replace")
        try:
            record = records.parse(entry.value, auth.etcd.data_format)
            users.append({"username": name, "hash": record.password_hash.split("$")[1],
                          "allowed_routing_labels": record.rule.to_json() if record.rule
                          else None})
        except RecordError as exc:
            users.append({"username": name, "error": str(exc)})
    if args.json:
        print(orjson.dumps({"revision": revision, "users": users}).decode())
        return EXIT_OK
    for user in users:
        if "error" in user:
            print(f"{user['username']}\tUNUSABLE: {user['error']}")
        else:
            labels = user["allowed_routing_labels"]
            print(f"{user['username']}\t{user['hash']}\t"
                  f"{'all labels' if labels is None else orjson.dumps(labels).decode()}")
    return EXIT_OK


_COMMANDS = {"put": _put, "delete": _delete, "list": _list}
