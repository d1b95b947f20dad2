"""The read-back check: the changed paths of the written resource against the planned ones."""

from __future__ import annotations

from shared.app.writer import has_change_tag, verify, with_tags


def test_matching_read_back_has_no_drift() -> None:
    proposed = {"resourceType": "Patient", "telecom": [{"value": "1"}], "gender": "female"}
    written = {**proposed, "meta": {"versionId": "x"}, "gender": "male"}  # gender was not ours to change
    assert verify(proposed, written, ["Patient.telecom"]) == []


def test_a_changed_path_that_reads_back_differently_is_drift() -> None:
    proposed = {"resourceType": "Observation", "valueQuantity": {"value": 72}, "status": "final"}
    written = {"resourceType": "Observation", "valueQuantity": {"value": 70}, "status": "final"}
    assert verify(proposed, written, ["Observation.value[x]", "Observation.status"]) == ["Observation.value[x]"]
    assert verify(proposed, {**written, "valueQuantity": {"value": 72}}, ["Observation.value[x]"]) == []
    assert verify(proposed, {"resourceType": "Observation", "status": "final"}, ["Observation.value[x]"]) == [
        "Observation.value[x]"
    ]


def test_tags_are_added_once_and_recognised() -> None:
    resource = {"resourceType": "Patient", "meta": {"versionId": "3", "tag": [{"system": "x", "code": "y"}]}}
    tagged = with_tags(with_tags(resource, "c1", "crm"), "c1", "crm")
    assert tagged["meta"]["tag"] == [
        {"system": "x", "code": "y"},
        {"system": "urn:writeback:change", "code": "c1"},
        {"system": "urn:writeback:source", "code": "crm"},
    ]
    assert "versionId" not in tagged["meta"] and resource["meta"]["versionId"] == "3"
    assert has_change_tag(tagged, "c1") and not has_change_tag(tagged, "c2") and not has_change_tag(None, "c1")
