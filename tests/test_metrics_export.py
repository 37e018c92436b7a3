"""observe_many must leave a histogram exactly as one observe per value would."""

from prometheus_client import CollectorRegistry, Histogram
from hypothesis import given, settings, strategies as st

from mgfast.metrics.export import observe_many

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def samples(histogram) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in histogram.collect() for s in metric.samples
            if not s.name.endswith("_created")}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=50))
def test_bulk_observation_equals_one_by_one(values):
    one = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    bulk = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    for value in values:
        one.observe(value)
    observe_many(bulk, values)
    got, want = samples(bulk), samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
