"""Why a TLS handshake ended as it did: the closed set of reasons metrics and logs use."""

from __future__ import annotations

import ssl

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


class HandshakeOutcome:
    """One handshake's verdict. The client certificate's subject, issuer and serial are read
    from its DER when first asked for (a rejection log, the revoked-by-issuer metric), not on
    every handshake: parsing one with ``cryptography`` costs about 14 us, 1-2% of a full
    handshake's server CPU, for nothing when the handshake succeeds."""

    __slots__ = ("reason", "duration", "peer", "detail", "certificate", "_names")

    def __init__(self, *, reason: str, duration: float, peer: str, detail: str = "",
                 certificate: bytes | None = None, subject: str = "", issuer: str = "",
                 serial: str = "") -> None:
        self.reason = reason  # one of REASONS
        self.duration = duration  # seconds from the first byte to the verdict
        self.peer = peer  # "ip:port"
        self.detail = detail  # OpenSSL's own words for a failure
        self.certificate = certificate  # the client's leaf certificate, DER, where one came
        given = subject or issuer or serial or certificate is None
        self._names: tuple[str, str, str] | None = (subject, issuer, serial) if given else None

    def _described(self) -> tuple[str, str, str]:
        if self._names is None:
            from mgfast.tls.peer_certificate import describe  # cryptography, when first needed
            self._names = describe(self.certificate)
        return self._names

    @property
    def subject(self) -> str:
        return self._described()[0]

    @property
    def issuer(self) -> str:
        return self._described()[1]

    @property
    def serial(self) -> str:
        """In hex."""
        return self._described()[2]

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    def __repr__(self) -> str:
        return (f"HandshakeOutcome(reason={self.reason!r}, peer={self.peer!r}, "
                f"duration={self.duration:.6f}, detail={self.detail!r})")
