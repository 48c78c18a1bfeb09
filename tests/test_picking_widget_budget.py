"""The picking widget's retraining budget: the same defaults as `pick train`, passed to the controller."""

import pytest

from napari_cryo.picking.training import TrainConfig


@pytest.mark.gui
def test_widget_has_a_budget_and_passes_it(make_napari_viewer, qtbot, monkeypatch):
    from napari_cryo.picking._widget import PickingWidget

    viewer = make_napari_viewer()
    widget = PickingWidget(viewer)
    assert widget._budget.value == 5.0 and widget._budget.label == "budget (min)"
    assert widget._epochs.value == TrainConfig().epochs and widget._epochs.label == "max epochs"
    # The view's part: the budget in minutes reaches the controller in seconds (0: none), with the epochs cap.
    # (Retraining end to end in a worker is tested in test_picking_widget.py.)
    calls = []
    monkeypatch.setattr(widget.controller, "training_jobs", lambda masks: ["job"])
    monkeypatch.setattr(PickingWidget, "run", lambda self, func, *args, **kwargs: calls.append((func, args, kwargs)))
    widget._budget.value = 2.5
    widget._epochs.value = 40
    widget.retrain()
    func, args, kwargs = calls[-1]
    assert func == widget.controller.retrain and args[0] == ["job"]
    assert args[-2:] == (40, 150.0) and kwargs["description"] == "retraining"
    widget._budget.value = 0.0
    widget.retrain()
    assert calls[-1][1][-1] is None
