"""Savant ZeroMQ transport: socket URLs, the out_stream writer and the in_stream reader."""
