"""Why a TLS handshake ended as it did: the closed set of reasons metrics and logs use."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

# OpenSSL X509_V_ERR_* codes -> reason. Anything else a verification reports is bad_certificate.
_VERIFY_REASONS = {
    2: "unknown_ca",   # unable to get issuer certificate
    3: "crl_missing",  # unable to get certificate CRL
    9: "not_yet_valid",
    10: "expired",
    11: "crl_expired",  # CRL is not yet valid: as unusable as an expired one
    12: "crl_expired",
    18: "unknown_ca",  # self-signed leaf
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "revoked",
}

REASONS = (
    "ok", "no_certificate", "unknown_ca", "revoked", "expired", "not_yet_valid", "crl_missing",
    "crl_expired", "bad_certificate", "protocol_error", "timeout",
)


def reason_for_verify_code(code: int) -> str:
    """The reason for an OpenSSL X509_V_ERR_* verification code."""
    return _VERIFY_REASONS.get(code, "bad_certificate")


def classify(exc: BaseException | None) -> str:
    """Map the exception a server-side handshake raised (None for success) to a reason."""
    if exc is None:
        return "ok"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return reason_for_verify_code(exc.verify_code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no_certificate"
    return "protocol_error"


@dataclass(frozen=True, slots=True)
class HandshakeOutcome:
    reason: str  # one of REASONS
    duration: float  # seconds from the first byte to the verdict
    peer: str  # "ip:port"
    detail: str = ""  # OpenSSL's own words for a failure
    subject: str = ""  # of the client certificate, where one was presented
    issuer: str = ""
    serial: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"
