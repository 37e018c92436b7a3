"""TLS: contexts on the hash-directory store, the memory-BIO server protocol, handshake outcomes."""
