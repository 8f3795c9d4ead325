"""Admission bounds as pure arithmetic (agent/device/admission.py; docs/agents.md, "Admission")."""

from __future__ import annotations

import pytest

from edgepart.agent.device.admission import Admission


def test_one_sender_holds_at_most_its_share_of_the_slots():
    adm = Admission(slots=8, held_bytes=1 << 20, share=0.75)
    for _ in range(6):
        assert adm.refusal("cam2", True, 10) is None
        adm.take("cam2", True, 10)
    why = adm.refusal("cam2", True, 10)
    assert why is not None and "cam2 holds 6" in why and "(6 of 8)" in why
    # the other senders still have the rest, and then the agent is full for everyone
    for _ in range(2):
        assert adm.refusal("app", True, 10) is None
        adm.take("app", True, 10)
    assert "8 requests in flight" in adm.refusal("dev1", True, 10)
    # a tensor for a request already held needs no slot
    assert adm.refusal("cam2", False, 10) is None
    assert adm.refused == {"cam2": 1, "dev1": 1}


def test_bytes_are_bounded_in_all_and_per_sender():
    adm = Admission(slots=100, held_bytes=4 << 20, share=0.75)
    adm.take("cam2", True, 3 << 20)
    assert "would pass the most one sender may (3 MiB: 3/4 of edgepart run --inflight-mb)" in adm.refusal("cam2", False, 1)
    assert adm.refusal("app", True, 1 << 20) is None
    adm.take("app", True, 1 << 20)
    assert "would pass its 4 MiB" in adm.refusal("dev0", True, 1)


def test_give_back_forgets_senders_that_hold_nothing():
    adm = Admission(slots=4, held_bytes=1 << 20)
    for i in range(1000):  # a flood of names, each one request that completes, two senders' bytes in it
        adm.take(f"s{i}", True, 60)
        adm.take("dev0", False, 40)
        adm.give_back(f"s{i}", {f"s{i}": 60, "dev0": 40})
    assert (adm.held_slots, adm.held_bytes) == (0, 0)
    assert not adm.slots_of and not adm.bytes_of  # nothing remembered of 1,000 senders


def test_the_one_device_a_later_stage_hears_from_has_it_all():
    adm = Admission(slots=8, held_bytes=1 << 20, whole="dev0")
    for _ in range(8):
        assert adm.refusal("dev0", True, 1 << 10) is None
        adm.take("dev0", True, 1 << 10)
    assert "8 requests in flight" in adm.refusal("dev0", True, 1)  # the totals still hold
    assert "8 requests in flight" in adm.refusal("mallory", True, 1)


def test_refusals_are_counted_for_a_bounded_number_of_senders():
    adm = Admission(slots=1, held_bytes=1 << 20)
    adm.take("dev0", True, 0)
    for i in range(5000):
        assert adm.refusal(f"s{i}", True, 0) is not None
    assert len(adm.refused) == 1024


@pytest.mark.parametrize("kw", [dict(slots=0), dict(held_bytes=0), dict(share=0), dict(share=1.5)])
def test_bounds_must_be_positive(kw):
    with pytest.raises(ValueError):
        Admission(**kw)


def test_a_later_stage_names_its_one_upstream_device():
    from edgepart.agent.device.admission import sole_upstream
    from edgepart.plan import CALLER, DeviceSpec, Plan, Route, Step, TensorSpec

    x, h, y = TensorSpec("x", "float32", (1, 8)), TensorSpec("h", "float32", (1, 8)), TensorSpec("y", "float32", (1, 8))
    plan = Plan(strategy="pipeline", model_name="net", model_sha256="ab" * 32, inputs=(x,), outputs=(y,),
                devices=(DeviceSpec("a"), DeviceSpec("b")),
                steps=(Step("stage0", "a", "stage0.onnx", "11" * 32, (x,), (h,)),
                       Step("stage1", "b", "stage1.onnx", "22" * 32, (h,), (y,))),
                routes=(Route("x", CALLER, "a"), Route("h", "a", "b"), Route("y", "b", CALLER)))
    assert sole_upstream(plan, "b") == "a"  # every app's requests reach b through a
    assert sole_upstream(plan, "a") == ""  # the apps send to a themselves
