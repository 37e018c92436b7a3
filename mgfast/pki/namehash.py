"""OpenSSL's name hash: the ``HASH`` in a hash directory's ``HASH.N`` / ``HASH.rN`` file names.

``openssl x509 -subject_hash`` and ``openssl crl -hash`` print ``X509_NAME_hash_ex()``: the first
four bytes, little-endian, of the SHA-1 of the name's *canonical* encoding. The canonical encoding
(OpenSSL ``crypto/x509/x_name.c``) is the concatenation of the DER of each RDN's SET, where every
attribute value of a text type is rewritten as a UTF8String that is ASCII-lower-cased, trimmed, and
has each run of ASCII white space collapsed to one space; values of other types are kept as they
are. Two names that OpenSSL considers equal (``X509_NAME_cmp``) have the same canonical encoding,
so :func:`canonical_name` is also the key used to match a CRL with its CA.

pyOpenSSL exposes the hash for certificates (``X509.subject_name_hash()``) but not for CRLs, so
this module computes it from the DER itself, for both; the tests check it against pyOpenSSL and
the ``openssl`` CLI on names with mixed case, extra spaces, multi-valued RDNs and non-ASCII text.
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509

# Universal tags of the string types OpenSSL canonicalises (ASN1_MASK_CANON), with the codec that
# turns their content into Unicode (ASN1_STRING_to_UTF8: 1-byte types map byte -> code point).
_CANON_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String (OpenSSL treats it as 8-bit)
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_UTF8STRING = 0x0C
_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_EXPLICIT_0 = 0xA0

_OSSL_SPACE = b" \t\n\x0b\x0c\r"  # ossl_isspace(): ASCII only
_SPACE_RUN = re.compile(rb"[ \t\n\x0b\x0c\r]+")
_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Read one DER element at ``pos``: (tag byte, content start, element end)."""
    tag = buf[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number form: skip the continuation bytes
        while buf[pos] & 0x80:
            pos += 1
        pos += 1
    first = buf[pos]
    pos += 1
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    end = pos + length
    if end > len(buf):
        raise ValueError("truncated DER")
    return tag, pos, end


def _children(buf: bytes, start: int, end: int,
              limit: int | None = None) -> list[tuple[int, int, int, int]]:
    """Elements in a constructed element's content: (tag, element start, content start, end)."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end and (limit is None or len(out) < limit):
        tag, content, stop = _tlv(buf, pos)
        out.append((tag, pos, content, stop))
        pos = stop
    return out


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def _canon_value(der: bytes, tag: int, content: bytes) -> bytes:
    codec = _CANON_CODECS.get(tag)
    if codec is None:
        return der
    text = content.decode(codec).encode("utf-8")
    text = _SPACE_RUN.sub(b" ", text.strip(_OSSL_SPACE)).translate(_ASCII_LOWER)
    return _der(_UTF8STRING, text)


def canonical_name(name_der: bytes) -> bytes:
    """OpenSSL's canonical encoding of a DER ``Name`` (empty for an empty name)."""
    tag, start, end = _tlv(name_der, 0)
    if tag != _SEQUENCE:
        raise ValueError("a Name must be a SEQUENCE")
    out = []
    for rdn_tag, _, rdn_start, rdn_end in _children(name_der, start, end):
        if rdn_tag != _SET:
            raise ValueError("an RDN must be a SET")
        entries = []
        for atv_tag, _, atv_start, atv_end in _children(name_der, rdn_start, rdn_end):
            if atv_tag != _SEQUENCE:
                raise ValueError("an attribute must be a SEQUENCE")
            (_, oid_pos, _, oid_end), (v_tag, v_pos, v_start, v_end) = _children(
                name_der, atv_start, atv_end, 2)
            value = _canon_value(name_der[v_pos:v_end], v_tag, name_der[v_start:v_end])
            entries.append(_der(_SEQUENCE, name_der[oid_pos:oid_end] + value))
        out.append(_der(_SET, b"".join(sorted(entries))))  # DER sorts SET OF
    return b"".join(out)


def name_hash(name_der: bytes) -> str:
    """``X509_NAME_hash_ex()`` of a DER ``Name`` as eight lower-case hex digits."""
    digest = hashlib.sha1(canonical_name(name_der)).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def cert_subject_der(cert: x509.Certificate) -> bytes:
    """The subject ``Name`` exactly as encoded in the certificate."""
    return _cert_name_der(cert, 4)


def cert_issuer_der(cert: x509.Certificate) -> bytes:
    """The issuer ``Name`` exactly as encoded in the certificate."""
    return _cert_name_der(cert, 2)


def _cert_name_der(cert: x509.Certificate, index: int) -> bytes:
    buf = cert.tbs_certificate_bytes
    _, start, end = _tlv(buf, 0)
    fields = _children(buf, start, end, 7)
    if fields[0][0] == _EXPLICIT_0:  # [0] version
        fields = fields[1:]
    _, pos, _, stop = fields[index]  # serial, signature, issuer, validity, subject
    return buf[pos:stop]


def crl_issuer_der(crl: x509.CertificateRevocationList) -> bytes:
    """The issuer ``Name`` exactly as encoded in the CRL."""
    buf = crl.tbs_certlist_bytes
    _, start, end = _tlv(buf, 0)
    fields = _children(buf, start, end, 3)
    if fields[0][0] == _INTEGER:  # version
        fields = fields[1:]
    _, pos, _, stop = fields[1]  # signature, issuer
    return buf[pos:stop]


def cert_hash(cert: x509.Certificate) -> str:
    """What ``openssl x509 -subject_hash`` prints."""
    return name_hash(cert_subject_der(cert))


def crl_hash(crl: x509.CertificateRevocationList) -> str:
    """What ``openssl crl -hash`` prints."""
    return name_hash(crl_issuer_der(crl))
