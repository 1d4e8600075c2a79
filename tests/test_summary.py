"""summary.json is built from reports other peers sent: absurd or ill-typed stats are ignored
when they arrive (consensus.writer.valid_reports), never trusted and never a crash."""
import math

from p2pfed import config
from p2pfed.consensus import writer
from p2pfed.outputs import summary


def _stats(**kw):
    s = {"members": [0, 1], "digest": "ab" * 32, "averaging_s": 0.1, "bytes_sent": 1000, "attempt": 1,
         "events": [], "train_loss": 1.5, "n_samples": 100, "correct": 40, "total": 50, "loss_sum": 60.0}
    s.update(kw)
    return s


def test_reports_with_absurd_or_ill_typed_stats_are_ignored():
    cfg = config.from_dict({"peers": [{"id": 0, "port": 5000}, {"id": 1, "port": 5001}]})
    bad = [_stats(members=["x"]), _stats(members=[-1]), _stats(correct=60), _stats(total=-5, correct=-6),
           _stats(averaging_s=math.nan), _stats(n_samples=True), _stats(bytes_sent=2**60), "not a dict",
           {k: v for k, v in _stats().items() if k != "loss_sum"}]      # an evaluation's counts come together
    for b in bad:
        assert not writer.valid_report(b), b
        doc = summary.build(cfg, writer.valid_reports({1: {0: _stats(), 1: b}}), "ab" * 32, 1, 1000)
        assert [r["members"] for r in doc["rounds"]] == [[0, 1]], b
        assert doc["rounds"][0]["eval_samples"] == 50 and list(doc["rounds"][0]["digests"]) == ["0"], b


def test_quantile_interpolates_and_the_90th_percentile_is_never_below_the_median():
    assert summary.quantile([3.0], 0.9) == 3.0
    assert summary.quantile([2.0, 1.0], 0.5) == 1.5 and summary.quantile([2.0, 1.0], 0.9) == 1.9
    assert summary.quantile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert summary.quantile(list(range(11)), 0.9) == 9.0
