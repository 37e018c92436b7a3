"""The gateway server: HTTP(S) in, Savant ZeroMQ out."""
