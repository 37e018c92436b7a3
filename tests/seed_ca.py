"""The seed guide's private CA, made by running its openssl commands verbatim.

The upstream "Client certificate authentication" guide (shared/seeds/000_*.txt) builds a CA, a
server certificate, a client certificate and a lookup hash directory with about thirty openssl and
shell commands. :class:`SeedCa` runs those code blocks as written, each in ``bash`` with the
working directory as the guide's ``$(pwd)``, so that tests check mgfast against exactly what an
operator following the guide would have. The only edits are the ones the guide asks for (the
server's IP or DNS name) and answering ``y`` to ``openssl ca``'s two prompts on stdin.

    seed = SeedCa.create(tmp_path)            # CA, server (IP SAN 127.0.0.1), client, hash dir
    seed.hash_dir                             # HASH.0 (CA certificate) and HASH.r0 (empty CRL)
    seed.revoke_client()                      # the guide's "Revoking certificates": HASH.r1
    crt, key = seed.issue_client("client2", "media-gateway-client-2")   # same commands again
    seed.revoke(crt); seed.publish_crl()      # ... and HASH.r2

Creating one costs three RSA 2048 key generations (well under a second); share it through a
module- or session-scoped fixture.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

OPENSSL_CA_ANSWERS = "y\ny\n"  # "Sign the certificate? [y/n]" and "... commit? [y/n]"

# ---- the guide's code blocks, in its order ------------------------------------------------------

CREATE_DIRECTORIES = '''\
CA_DIR="$(pwd)/ca"
mkdir "${CA_DIR}" "${CA_DIR}/certs" "${CA_DIR}/crl"
'''

PREPARE_DATABASE = '''\
touch "${CA_DIR}/index.txt"
echo 01 > "${CA_DIR}/serial"
echo 1000 > "${CA_DIR}/crlnumber"
'''

PREPARE_CONFIG = r'''
echo "[ ca ]
default_ca = CA_default

[ CA_default ]
dir = ${CA_DIR}
certificate = \$dir/ca.crt
private_key = \$dir/ca.key
database = \$dir/index.txt
new_certs_dir = \$dir/certs
serial = \$dir/serial
crl_dir = \$dir/crl
crl = \$dir/crl/ca.crl
crlnumber = \$dir/crlnumber
x509_extensions = v3_ca
crl_extensions = crl_ext
name_opt = ca_default
cert_opt = ca_default
default_days = 365
default_crl_days = 30
default_md = default
preserve = no
policy = policy_any

[ policy_any ]
countryName = optional
stateOrProvinceName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional

####################################################################
[ req ]
default_bits = 2048
default_keyfile = privkey.pem
distinguished_name = req_distinguished_name
attributes = req_attributes
x509_extensions = v3_ca

[ req_distinguished_name ]
countryName = Country Name (2 letter code)
countryName_default = US
countryName_min = 2
countryName_max = 2
stateOrProvinceName = State or Province Name (full name)
stateOrProvinceName_default =
localityName = Locality Name (eg, city)
localityName+default =
0.organizationName = Organization Name (eg, company)
0.organizationName_default =
organizationalUnitName = Organizational Unit Name (eg, section)
organizationalUnitName_default =
commonName = Common Name (e.g. server FQDN or YOUR name)
commonName_max = 64
emailAddress = Email Address
emailAddress_max = 64

[ req_attributes ]
challengePassword = A challenge password
challengePassword_min = 4
challengePassword_max = 20
unstructuredName = An optional company name

[ v3_req ]
basicConstraints = CA:FALSE
keyUsage = nonRepudiation, digitalSignature, keyEncipherment

[ v3_ca ]
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always,issuer
basicConstraints = critical,CA:true
keyUsage = critical, digitalSignature, cRLSign, keyCertSign

[ crl_ext ]
authorityKeyIdentifier=keyid:always
" > "${CA_DIR}/ca.conf"
'''

GENERATE_CA = '''\
openssl genpkey -algorithm RSA -out "${CA_DIR}/ca.key"
openssl req -new -x509 -days 365 -config "${CA_DIR}/ca.conf" -key "${CA_DIR}/ca.key" -out "${CA_DIR}/ca.crt" -subj "/CN=media-gateway-ca"
'''

GENERATE_SERVER_KEY_AND_CSR = '''\
openssl genpkey -algorithm RSA -out "${CA_DIR}/certs/server.key"
openssl req -new -key "${CA_DIR}/certs/server.key" -out "${CA_DIR}/certs/server.csr" -subj "/CN=media-gateway-server"
'''

SIGN_SERVER_IP_SAN = '''\
export HOST_IP="192.168.0.108"
openssl ca -config "${CA_DIR}/ca.conf" -in "${CA_DIR}/certs/server.csr" -out "${CA_DIR}/certs/server.crt" -extfile <(echo "basicConstraints=CA:FALSE
nsComment=\\"OpenSSL Generated Certificate\\"
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${HOST_IP}")
'''

SIGN_SERVER_DNS_SAN = '''\
export MEDIA_GATEWAY_SERVER_DNS="media-gateway-server"
openssl ca -config "${CA_DIR}/ca.conf" -in "${CA_DIR}/certs/server.csr" -out "${CA_DIR}/certs/server.crt" -extfile <(echo "basicConstraints=CA:FALSE
nsComment=\\"OpenSSL Generated Certificate\\"
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:${MEDIA_GATEWAY_SERVER_DNS}")
'''

GENERATE_CLIENT = '''\
openssl genpkey -algorithm RSA -out "${CA_DIR}/certs/client.key"
openssl req -new -key "${CA_DIR}/certs/client.key" -out "${CA_DIR}/certs/client.csr" -subj "/CN=media-gateway-client"
openssl ca -config "${CA_DIR}/ca.conf" -in "${CA_DIR}/certs/client.csr" -out "${CA_DIR}/certs/client.crt" -extfile <(echo 'basicConstraints=CA:FALSE
nsComment="OpenSSL Generated Certificate"
subjectKeyIdentifier=hash
keyUsage=critical,nonRepudiation,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid,issuer')
'''

CREATE_HASH_DIR = '''\
mkdir "${CA_DIR}/lookup-hash-dir"
'''

ADD_CA_CERT = '''\
CA_HASH=$(openssl x509 -in "${CA_DIR}/ca.crt" -subject_hash -noout)
cp "${CA_DIR}/ca.crt" "${CA_DIR}/lookup-hash-dir/$CA_HASH.0"
'''

ADD_EMPTY_CRL = '''\
openssl ca -config "${CA_DIR}/ca.conf" -gencrl -out "${CA_DIR}/crl/ca.crl"
CRL_HASH=$(openssl crl -in "${CA_DIR}/crl/ca.crl" -hash -noout)
cp "${CA_DIR}/crl/ca.crl" "${CA_DIR}/lookup-hash-dir/$CRL_HASH.r0"
'''

REVOKE_CLIENT = '''\
openssl ca -config "${CA_DIR}/ca.conf" -revoke "${CA_DIR}/certs/client.crt"
'''

PUBLISH_CRL_R1 = '''\
openssl ca -config "${CA_DIR}/ca.conf" -gencrl -out "${CA_DIR}/crl/ca.crl"
CRL_HASH=$(openssl crl -in "${CA_DIR}/crl/ca.crl" -hash -noout)
cp "${CA_DIR}/crl/ca.crl" "${CA_DIR}/lookup-hash-dir/$CRL_HASH.r1"
'''


class SeedCommandError(AssertionError):
    """A seed command failed; the message holds the script and openssl's output."""


@dataclass
class SeedCa:
    """A CA directory made by the guide's commands in ``workdir`` (the guide's ``$(pwd)``)."""

    workdir: Path
    host_ip: str | None = "127.0.0.1"
    dns_name: str | None = None
    with_crl: bool = True
    _crl_published_at: float = field(default=0.0, repr=False)  # time just after the last CRL

    # ---- the guide's files ----
    @property
    def ca_dir(self) -> Path:
        return self.workdir / "ca"

    @property
    def ca_conf(self) -> Path:
        return self.ca_dir / "ca.conf"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def ca_crt(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.ca_dir / "certs" / "server.key"

    @property
    def server_crt(self) -> Path:
        return self.ca_dir / "certs" / "server.crt"

    @property
    def client_key(self) -> Path:
        return self.ca_dir / "certs" / "client.key"

    @property
    def client_crt(self) -> Path:
        return self.ca_dir / "certs" / "client.crt"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl" / "ca.crl"

    @property
    def hash_dir(self) -> Path:
        return self.ca_dir / "lookup-hash-dir"

    @property
    def ca_hash(self) -> str:
        """``openssl x509 -subject_hash`` of the CA certificate."""
        return self.run('openssl x509 -in "${CA_DIR}/ca.crt" -subject_hash -noout').strip()

    # ---- running the guide's commands ----
    def run(self, script: str, *, answer_yes: bool = False) -> str:
        """Run a guide code block in bash in ``workdir`` with ``CA_DIR`` set; return stdout."""
        env = {**os.environ, "CA_DIR": str(self.ca_dir)}
        proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=self.workdir,
                              env=env, input=OPENSSL_CA_ANSWERS if answer_yes else "",
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SeedCommandError(f"seed command failed ({proc.returncode}):\n{script}\n"
                                   f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc.stdout

    @classmethod
    def create(cls, workdir: Path, *, host_ip: str | None = "127.0.0.1",
               dns_name: str | None = None, with_crl: bool = True) -> SeedCa:
        """Run the guide from "Creating a private CA" to "Preparing X509 lookup hash directory".

        The server certificate gets an IP SAN (``host_ip``) or, with ``dns_name`` and
        ``host_ip=None``, a DNS SAN. ``with_crl=False`` skips "generate and add an empty CRL".
        """
        if (host_ip is None) == (dns_name is None):
            raise ValueError("give exactly one of host_ip and dns_name")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        seed = cls(workdir, host_ip, dns_name, with_crl)
        seed.run(CREATE_DIRECTORIES)
        seed.run(PREPARE_DATABASE)
        seed.run(PREPARE_CONFIG)
        seed.run(GENERATE_CA)
        seed.run(GENERATE_SERVER_KEY_AND_CSR)
        if host_ip is not None:  # "replace 192.168.0.108 ... with your values"
            seed.run(SIGN_SERVER_IP_SAN.replace("192.168.0.108", host_ip), answer_yes=True)
        else:
            seed.run(SIGN_SERVER_DNS_SAN.replace('="media-gateway-server"', f'="{dns_name}"'),
                     answer_yes=True)
        seed.run(GENERATE_CLIENT, answer_yes=True)
        seed.run(CREATE_HASH_DIR)
        seed.run(ADD_CA_CERT)
        if with_crl:
            seed.run(ADD_EMPTY_CRL)
            seed._crl_published_at = time.time()
        return seed

    def revoke_client(self) -> Path:
        """The guide's "Revoking certificates": revoke the client, publish ``HASH.r1``.

        OpenSSL ignores a CRL whose lastUpdate is not later, to the second, than the CRL it
        already holds, so this first waits for the second after ``HASH.r0`` was made.
        Returns the new file in the hash directory.
        """
        self.run(REVOKE_CLIENT)
        self._wait_next_second()
        self.run(PUBLISH_CRL_R1)
        self._crl_published_at = time.time()
        return self.hash_dir / f"{self.ca_hash}.r1"

    # ---- more of the same, for tests that need a second client or a later CRL ----
    def issue_client(self, name: str, cn: str) -> tuple[Path, Path]:
        """The guide's client block with ``client`` -> ``name`` and its CN -> ``cn``.

        Returns (certificate, key) in ``ca/certs``. ``cn`` must differ from every earlier one
        (openssl ca's default ``unique_subject = yes``).
        """
        script = (GENERATE_CLIENT.replace("certs/client.", f"certs/{name}.")
                  .replace("/CN=media-gateway-client", f"/CN={cn}"))
        self.run(script, answer_yes=True)
        return self.ca_dir / "certs" / f"{name}.crt", self.ca_dir / "certs" / f"{name}.key"

    def revoke(self, cert: Path) -> None:
        """The guide's ``openssl ca -revoke`` for any certificate this CA issued."""
        self.run(REVOKE_CLIENT.replace('"${CA_DIR}/certs/client.crt"', f'"{cert}"'))

    def publish_crl(self) -> Path:
        """The guide's "generate a new CRL and update the hash directory" with the next free
        ``HASH.rN`` (the guide's block hard-codes r1). Returns the new file."""
        n = 0
        while (self.hash_dir / f"{self.ca_hash}.r{n}").exists():
            n += 1
        self._wait_next_second()
        self.run(PUBLISH_CRL_R1.replace(".r1", f".r{n}"))
        self._crl_published_at = time.time()
        return self.hash_dir / f"{self.ca_hash}.r{n}"

    def _wait_next_second(self) -> None:
        delay = int(self._crl_published_at) + 1 - time.time()
        if delay > 0:
            time.sleep(delay)
