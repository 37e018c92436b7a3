"""Upstream Media Gateway JSON configurations, loaded unchanged, plus mgfast's own keys."""
