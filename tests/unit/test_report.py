from lmcompress.report import pareto_front


def test_pareto_front():
    # (latency, value): lower latency and higher value are better
    points = [(100.0, 0.90), (50.0, 0.85), (60.0, 0.80), (10.0, 0.70), (10.0, 0.60), (200.0, 0.90)]
    assert pareto_front(points) == [True, True, False, True, False, False]
    assert pareto_front([(1.0, 1.0)]) == [True]
