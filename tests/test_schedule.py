"""Rounds, epochs and cadences: pure functions every peer computes identically."""
from p2pfed import config
from p2pfed.learning import schedule


def _train(**kw):
    return config.from_dict({"train": kw}).train


def test_rounds_in_steps_follow_from_epochs_over_the_average_partition():
    # 5 peers x 8,000 images, batch 128: 63 steps per epoch; 5 epochs at k=4 is 79 rounds
    plan = schedule.make_plan(_train(local_steps=4, epochs=5, batch_size=128), n_samples=8123, mean_samples=8000)
    assert plan.steps_per_epoch == 63
    assert plan.total_steps == 315 and plan.rounds == 79
    assert set(plan.steps[:-1]) == {4} and plan.steps[-1] == 3      # the last round is cut to the exact total
    # every peer gets the same rounds, whatever its own partition size
    other = schedule.make_plan(_train(local_steps=4, epochs=5, batch_size=128), n_samples=100, mean_samples=8000)
    assert other == plan


def test_growing_k_over_equal_parts_of_the_run():
    plan = schedule.make_plan(_train(local_steps=[2, 4, 8], epochs=3, batch_size=100), n_samples=1000,
                              mean_samples=1000)
    assert plan.total_steps == 30
    assert plan.steps == (2,) * 5 + (4,) * 3 + (8,)
    assert plan.start_step(6) == 10 and plan.round_of_step(10) == 6


def test_fixed_number_of_rounds_and_local_epochs_mode():
    plan = schedule.make_plan(_train(local_steps=2, rounds=30), n_samples=200, mean_samples=200)
    assert plan.steps == (2,) * 30
    # local_epochs: each peer passes over its own partition; the number of rounds is the same for all
    a = schedule.make_plan(_train(local_epochs=0.5, epochs=2, batch_size=128), n_samples=1000, mean_samples=700)
    b = schedule.make_plan(_train(local_epochs=0.5, epochs=2, batch_size=128), n_samples=400, mean_samples=700)
    assert a.rounds == b.rounds == 4 and a.steps[0] == 4 and b.steps[0] == 2
    assert schedule.make_plan(_train(local_epochs=4, rounds=2, max_steps=25), 1000, 1000).steps == (25, 25)


def test_evaluation_cadence_once_per_epoch_and_the_last_round():
    plan = schedule.make_plan(_train(local_steps=4, epochs=2, batch_size=10), n_samples=100, mean_samples=100)
    assert plan.steps_per_epoch == 10 and plan.rounds == 5          # 4, 4, 4, 4, 4 steps: epochs end in rounds 3, 5
    assert [r for r in range(1, 6) if plan.evaluates(r, 0)] == [3, 5]
    assert [r for r in range(1, 6) if plan.evaluates(r, 2)] == [2, 4, 5]
    assert plan.epoch_after(5) == 2.0


def test_progressive_resizing_trains_small_until_the_fraction_then_at_full_size():
    from p2pfed.learning import schedule
    sizes = [schedule.input_size_at(s, 10, 32, 24, 0.5) for s in range(10)]
    assert sizes == [24] * 5 + [32] * 5
    assert {schedule.input_size_at(s, 10, 32, 0, 0.5) for s in range(10)} == {32}       # off
    assert {schedule.input_size_at(s, 10, 32, 40, 0.5) for s in range(10)} == {32}      # not smaller: off
    assert schedule.input_size_at(0, 10, 32, 24, 0.0) == 32
