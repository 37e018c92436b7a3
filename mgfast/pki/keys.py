"""Private keys: generation and the PKCS#8 PEM form the upstream client requires."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
SigningPublicKey = (rsa.RSAPublicKey | ec.EllipticCurvePublicKey | dsa.DSAPublicKey
                    | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)

RSA_BITS = 2048  # what `openssl genpkey -algorithm RSA` makes, as in the seed
EC_CURVE = ec.SECP256R1()  # the curve every TLS stack supports


def new_key(use_ec: bool = False) -> PrivateKey:
    if use_ec:
        return ec.generate_private_key(EC_CURVE)
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), like `openssl genpkey`."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"unsupported CA key type {type(key).__name__}")
    return key


def signing_hash() -> hashes.SHA256:
    return hashes.SHA256()  # OpenSSL's `default_md = default` for RSA and P-256


def issuer_public_key(cert: x509.Certificate) -> SigningPublicKey:
    """``cert``'s public key as one of the signing key types OpenSSL's CAs use; TypeError for
    any other (a key-agreement key such as X25519 can sign neither certificates nor CRLs)."""
    key = cert.public_key()
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, dsa.DSAPublicKey,
                            ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        raise TypeError(f"a {type(key).__name__} is not a CA signing key")
    return key
