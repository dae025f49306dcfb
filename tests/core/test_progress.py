import threading

import pytest

from effstudio.core.progress import Cancelled, Progress


def test_update_reports_fraction_and_message() -> None:
    seen = []
    p = Progress(lambda f, m: seen.append((f, m)))
    p.update(0.25, "loading")
    p.update(message="still loading")
    assert seen == [(0.25, "loading"), (0.25, "still loading")]


def test_sub_progress_maps_into_parent_range() -> None:
    seen = []
    p = Progress(lambda f, m: seen.append(round(f, 3)))
    child = p.sub(0.5, 1.0)
    child.update(0.0)
    child.update(0.5)
    child.update(1.0)
    assert seen == [0.5, 0.75, 1.0]


def test_cancel_from_another_thread_stops_the_next_update() -> None:
    p = Progress()
    child = p.sub(0.0, 0.5)
    t = threading.Thread(target=p.cancel)
    t.start()
    t.join()
    assert p.cancelled and child.cancelled
    with pytest.raises(Cancelled):
        child.update(0.1)
    with pytest.raises(Cancelled):
        p.check()
