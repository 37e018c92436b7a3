"""Command line: ``mgfast server [CONFIG]``, ``mgfast client [CONFIG]``, ``mgfast pki ...``,
``mgfast users ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mgfast import __version__, logs
from mgfast.memory import CLIENT_TOP_PAD, CLIENT_TRIM_THRESHOLD, keep_freed_memory

# Exit status for a start-up failure (bad config, unusable certificate, port in use).
EXIT_STARTUP = 2

log = logging.getLogger("mgfast")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pki"]:
        from mgfast.pki.cli import main as pki_main
        return pki_main(argv[1:])
    if argv[:1] == ["users"]:
        from mgfast.auth.cli import main as users_main
        return users_main(argv[1:])
    parser = argparse.ArgumentParser(prog="mgfast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mgfast {__version__}")
    parser.add_argument("--log-level", help="debug, info (default), warning, error")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("server", "client"):
        sub = commands.add_parser(name, help=f"run the gateway {name}")
        sub.add_argument("config", nargs="?", help="upstream JSON config; embedded default if absent")
        sub.add_argument("--strict", action="store_true",
                         help="treat config warnings (unknown keys, ...) as errors; the same as "
                              '"strict": true in the config')
        if name == "server":
            sub.add_argument("--workers", type=_positive, help="worker processes (default: the "
                             "config's `workers`, else the CPUs less one, at least 1)")
    commands.add_parser("pki", help="certificate authority and hash-directory tooling")
    commands.add_parser("users", help="basic-authentication users in etcd")
    args = parser.parse_args(argv)
    if args.log_level:
        os.environ["MGFAST_LOG_LEVEL"] = args.log_level  # child processes read it too
    logs.setup(args.log_level)
    if args.command == "client":
        keep_freed_memory(CLIENT_TOP_PAD, CLIENT_TRIM_THRESHOLD)
    else:
        keep_freed_memory()  # the server's values; the children it spawns do the same
    try:
        if args.command == "server":
            return _server(args)
        return _client(args)
    except KeyboardInterrupt:
        return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _server(args: argparse.Namespace) -> int:
    from mgfast.config.errors import ConfigError
    from mgfast.config.loader import load_server_config
    from mgfast.server.main import run
    from mgfast.server.worker import StartupError
    from mgfast.tls.context import TlsSetupError

    try:
        config = load_server_config(args.config, strict=args.strict)
        if args.config is None:
            log.info("no config file given: using the embedded default", extra={
                "hint": "pass a JSON config path to change it"})
        return run(config, args.workers)
    except (ConfigError, StartupError, TlsSetupError) as exc:
        print(f"mgfast server: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _client(args: argparse.Namespace) -> int:
    from mgfast.client.main import run
    from mgfast.config.errors import ConfigError
    from mgfast.config.loader import load_client_config
    from mgfast.tls.context import TlsSetupError

    try:
        config = load_client_config(args.config, strict=args.strict)
        if args.config is None:
            log.info("no config file given: using the embedded default", extra={
                "hint": "pass a JSON config path to change it"})
        return run(config)
    except (ConfigError, TlsSetupError) as exc:
        print(f"mgfast client: {exc}", file=sys.stderr)
        return EXIT_STARTUP
