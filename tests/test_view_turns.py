"""Steps run one per turn of the Qt event loop, and the count of those still waiting."""

from __future__ import annotations


def test_steps_run_in_order_one_turn_apart_and_none_is_left_pending(qtbot):
    from napari_cryo._view import in_turns, pending_turns

    ran = []
    in_turns([lambda: ran.append(1), lambda: ran.append(2), lambda: ran.append(3)])
    assert ran == [] and pending_turns() == 1  # the first waits for its turn; the others are scheduled one by one
    qtbot.waitUntil(lambda: ran == [1, 2, 3] and pending_turns() == 0, timeout=5000)
    in_turns([lambda: ran.append(4), lambda: ran.append(5)], now=True)
    assert ran[-1] == 4 and pending_turns() == 1
    qtbot.waitUntil(lambda: ran[-1] == 5 and pending_turns() == 0, timeout=5000)
