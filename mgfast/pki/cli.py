"""``mgfast pki``: the seed guide's openssl steps as a few commands, and store inspection.

    mgfast pki init-ca DIR --cn NAME [--days N] [--ec]
    mgfast pki issue-server DIR --cn NAME (--ip IP | --dns NAME)... --out PREFIX [validity] [--ec]
    mgfast pki issue-client DIR --cn NAME --out PREFIX [validity] [--ec]
    mgfast pki revoke DIR CERT_FILE
    mgfast pki gen-crl DIR [--days N] [--out FILE] [--install HASH_DIR]
                           [--last-update TIME] [--next-update TIME]
    mgfast pki install HASH_DIR FILE...
    mgfast pki status HASH_DIR [--json]

validity is ``--days N`` or ``--not-before TIME`` / ``--not-after TIME`` (ISO 8601, UTC unless
an offset is given). Exit status: 0 success, 1 ``status`` found problems, 2 error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import orjson

from mgfast.pki.ca import CA_DAYS, CaDir, init_ca
from mgfast.pki.crl import CRL_DAYS, gen_crl, revoke
from mgfast.pki.files import PkiError
from mgfast.pki.hashdir import install_files
from mgfast.pki.issue import CERT_DAYS, issue, parse_san
from mgfast.pki.store import StoreStatus, read_store

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
REVOKED_SHOWN = 8  # serials listed in the table; --json lists all

WORKFLOW = """\
the client-certificate guide's openssl steps:
  mgfast pki init-ca ca --cn media-gateway-ca
  mgfast pki issue-server ca --cn media-gateway-server --ip 192.168.0.108 --out server
  mgfast pki issue-client ca --cn media-gateway-client --out client
  mgfast pki install lookup-hash-dir ca/ca.crt
  mgfast pki gen-crl ca --install lookup-hash-dir
revoking a client:
  mgfast pki revoke ca client.crt && mgfast pki gen-crl ca --install lookup-hash-dir
checking the directory a server reads (also before the CRL expires, e.g. from cron):
  mgfast pki status lookup-hash-dir
"""


def _time(text: str) -> datetime:
    try:  # Python 3.10's fromisoformat() does not take the "Z" suffix
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def _fmt(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgfast pki", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Private CA, certificates, CRLs and the OpenSSL hash directory for mutual "
                    "TLS.", epilog=WORKFLOW)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def validity(sp: argparse.ArgumentParser, days: int) -> None:
        sp.add_argument("--days", type=int, default=days,
                        help=f"validity from --not-before (default {days})")
        sp.add_argument("--not-before", type=_time, metavar="TIME", help="default: now")
        sp.add_argument("--not-after", type=_time, metavar="TIME",
                        help="overrides --days (a past time makes an expired certificate)")
        sp.add_argument("--ec", action="store_true", help="ECDSA P-256 key instead of RSA 2048")

    sp = sub.add_parser("init-ca", help="create a CA directory (key, certificate, database)")
    sp.add_argument("dir", type=Path, metavar="DIR")
    sp.add_argument("--cn", required=True, help="CA common name, e.g. media-gateway-ca")
    sp.add_argument("--days", type=int, default=CA_DAYS, help=f"default {CA_DAYS}")
    sp.add_argument("--ec", action="store_true", help="ECDSA P-256 key instead of RSA 2048")

    for profile in ("server", "client"):
        sp = sub.add_parser(f"issue-{profile}", help=f"issue a {profile} certificate and key")
        sp.add_argument("dir", type=Path, metavar="DIR", help="CA directory")
        sp.add_argument("--cn", required=True, help="subject common name")
        if profile == "server":
            sp.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
            sp.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
        sp.add_argument("--out", required=True, type=Path, metavar="PREFIX",
                        help="writes PREFIX.crt and PREFIX.key (PKCS#8 PEM)")
        validity(sp, CERT_DAYS)

    sp = sub.add_parser("revoke", help="mark a certificate revoked (then run gen-crl)")
    sp.add_argument("dir", type=Path, metavar="DIR", help="CA directory")
    sp.add_argument("cert", type=Path, metavar="CERT_FILE")

    sp = sub.add_parser("gen-crl", help="publish a CRL of the revoked certificates")
    sp.add_argument("dir", type=Path, metavar="DIR", help="CA directory")
    sp.add_argument("--days", type=int, default=CRL_DAYS,
                    help=f"nextUpdate = lastUpdate + days (default {CRL_DAYS})")
    sp.add_argument("--out", type=Path, metavar="FILE", help="also write the CRL here "
                    "(it is always written to DIR/crl/ca.crl)")
    sp.add_argument("--install", type=Path, metavar="HASH_DIR",
                    help="and install it into this hash directory")
    sp.add_argument("--last-update", type=_time, metavar="TIME", help="default: now")
    sp.add_argument("--next-update", type=_time, metavar="TIME",
                    help="overrides --days (a past time makes an expired CRL)")

    sp = sub.add_parser("install", help="install CA certificates and CRLs into a hash directory")
    sp.add_argument("hash_dir", type=Path, metavar="HASH_DIR")
    sp.add_argument("files", type=Path, nargs="+", metavar="FILE")

    sp = sub.add_parser("status", help="inspect a hash directory; exit 1 on problems")
    sp.add_argument("hash_dir", type=Path, metavar="HASH_DIR")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _install(hash_dir: Path, files: list[Path]) -> None:
    for r in install_files(hash_dir, files):
        if r.written:
            print(f"installed {r.kind} of {r.name} as {r.path}")
        else:
            print(f"already installed: {r.kind} of {r.name} as {r.path}")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_status(st: StoreStatus) -> str:
    lines = [f"hash directory {st.hash_dir} at {_fmt(st.checked_at)}", "", "CA certificates"]
    rows = [["FILE", "SUBJECT", "NOT AFTER", ""]]
    rows += [[c.file.name, c.subject, _fmt(c.not_after),
              ("EXPIRED " if c.expired else "") + ("" if c.reachable else "UNREACHABLE")]
             for c in st.cas]
    lines += _table(rows) if st.cas else ["  (none)"]
    lines += ["", "CRLs (* = the one OpenSSL uses for its issuer, x = never read)"]
    rows = [["", "FILE", "ISSUER", "NUMBER", "LAST UPDATE", "NEXT UPDATE", "REVOKED"]]
    for c in st.crls:
        serials = " ".join(f"{s:02X}" for s in c.revoked_serials[:REVOKED_SHOWN])
        more = " ..." if len(c.revoked_serials) > REVOKED_SHOWN else ""
        rows.append(["*" if c.effective else ("x" if not c.reachable else ""), c.file.name,
                     c.issuer, "-" if c.number is None else str(c.number), _fmt(c.last_update),
                     _fmt(c.next_update),
                     f"{len(c.revoked_serials)}" + (f": {serials}{more}" if serials else "")])
    lines += _table(rows) if st.crls else ["  (none)"]
    lines.append("")
    if st.problems:
        lines.append(f"{len(st.problems)} problem(s):")
        lines += [f"  - {p}" for p in st.problems]
    else:
        lines.append("OK: no problems")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "init-ca":
        ca = init_ca(args.dir, args.cn, days=args.days, use_ec=args.ec)
        cert = ca.load_cert()
        print(f"created CA '{cert.subject.rfc4514_string()}' in {ca.path} "
              f"(certificate {ca.cert_path}, valid until {_fmt(cert.not_valid_after_utc)})")
        print(f"next: mgfast pki install HASH_DIR {ca.cert_path} && "
              f"mgfast pki gen-crl {ca.path} --install HASH_DIR")
    elif cmd in ("issue-server", "issue-client"):
        profile = cmd.removeprefix("issue-")
        san = parse_san(args.ip, args.dns) if profile == "server" else []
        r = issue(CaDir(args.dir), profile, args.cn, args.out, san=san, days=args.days,
                  not_before=args.not_before, not_after=args.not_after, use_ec=args.ec)
        print(f"issued {profile} certificate serial {r.serial:02X} for CN={args.cn}, valid "
              f"{_fmt(r.not_before)} .. {_fmt(r.not_after)}: {r.cert_path}, {r.key_path}")
    elif cmd == "revoke":
        rv = revoke(CaDir(args.dir), args.cert)
        state = "was already revoked" if rv.already else "revoked"
        print(f"serial {rv.serial:02X} {state} at {_fmt(rv.revoked_at)}; "
              f"publish it: mgfast pki gen-crl {args.dir} --install HASH_DIR")
    elif cmd == "gen-crl":
        published = gen_crl(CaDir(args.dir), days=args.days, out=args.out,
                            last_update=args.last_update, next_update=args.next_update)
        print(f"CRL number {published.number} with {published.revoked} revoked, lastUpdate "
              f"{_fmt(published.last_update)}, nextUpdate {_fmt(published.next_update)}: "
              f"{published.path}")
        if args.install is not None:
            _install(args.install, [published.path])
    elif cmd == "install":
        _install(args.hash_dir, args.files)
    elif cmd == "status":
        st = read_store(args.hash_dir)
        if args.json:
            sys.stdout.write(orjson.dumps(st.to_dict(), option=orjson.OPT_INDENT_2,
                                          default=str).decode() + "\n")  # default: Path
        else:
            print(format_status(st))
        return EXIT_PROBLEMS if st.problems else EXIT_OK
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run one ``mgfast pki`` command; returns the exit status (never raises SystemExit)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed the message
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return _run(args)
    except PkiError as exc:
        print(f"mgfast pki: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
