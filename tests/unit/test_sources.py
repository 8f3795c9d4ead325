"""sources.yaml: the values it reads, and a clear SourcesError for every malformed file
(docs/priority.md)."""

from __future__ import annotations

import dataclasses

import pytest

import edgepart
from edgepart.errors import EdgepartError, SourcesError
from edgepart.sources import SOURCES_SCHEMA, Source, Sources, sources_from_dict

from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.sources import load_sources

CLUSTER = cluster_from_dict({"devices": [{"name": "jetson-a", "gflops": 60}, {"name": "pi-b", "gflops": 10}]})

GOOD = """\
schema: 1
sources:
  - {name: door, device: jetson-a, priority: 10, rate_hz: 5, deadline_ms: 250}
  - {name: yard, device: pi-b, priority: 1, rate_hz: 2.5}
"""


def write(tmp_path, text: str):
    p = tmp_path / "sources.yaml"
    p.write_text(text)
    return p


def test_a_good_file_reads_into_frozen_values(tmp_path):
    srcs = load_sources(write(tmp_path, GOOD), CLUSTER)
    assert srcs == Sources((Source("door", "jetson-a", 10.0, 5.0, 250.0), Source("yard", "pi-b", 1.0, 2.5)), 1)
    assert srcs.schema == SOURCES_SCHEMA and srcs.names == ("door", "yard") and len(srcs) == 2
    assert srcs.get("yard").deadline_ms is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        srcs.sources[0].priority = 3  # type: ignore[misc]
    # the dict form reads back to the same value (a plan will carry it as JSON)
    assert sources_from_dict(srcs.to_dict(), ["jetson-a", "pi-b"]) == srcs
    with pytest.raises(SourcesError, match="No source is named 'porch'.*door, yard"):
        srcs.get("porch")


def test_sources_error_is_public_and_an_edgepart_error():
    assert edgepart.SourcesError is SourcesError and issubclass(SourcesError, EdgepartError)


@pytest.mark.parametrize("text, message", [
    ("sources: [", "not valid YAML at line"),
    ("- a\n- b\n", "expected a mapping with 'sources'"),
    ("sources: []\n", "'sources' must be a non-empty list"),
    ("source: []\n", "unknown key\\(s\\) source"),
    ("schema: 2\nsources: [{name: a, device: pi-b, priority: 1, rate_hz: 1}]\n", "schema 2 is not one"),
    ("sources: [7]\n", r"sources\[0\] must be a mapping"),
    ("sources: [{name: a, device: pi-b, priority: 1}]\n", r"sources\[0\] lacks rate_hz"),
    ("sources: [{name: a, device: pi-b, priority: 1, rate_hz: 1, rate: 3}]\n", "unknown key\\(s\\) rate;"),
    ("sources: [{name: a, device: nano, priority: 1, rate_hz: 1}]\n",
     "source 'a' sits on 'nano', which is not a device of the cluster \\(jetson-a, pi-b\\)"),
    ("sources: [{name: a, device: pi-b, priority: 0, rate_hz: 1}]\n", "source 'a': priority .* positive number, not 0"),
    ("sources: [{name: a, device: pi-b, priority: -2, rate_hz: 1}]\n", "priority .* not -2"),
    ("sources: [{name: a, device: pi-b, priority: high, rate_hz: 1}]\n", "priority .* not 'high'"),
    ("sources: [{name: a, device: pi-b, priority: true, rate_hz: 1}]\n", "priority .* not True"),
    ("sources: [{name: a, device: pi-b, priority: 1, rate_hz: 0}]\n", "rate_hz .* positive number, not 0"),
    ("sources: [{name: a, device: pi-b, priority: 1, rate_hz: .nan}]\n", "rate_hz .* positive number, not nan"),
    ("sources: [{name: a, device: pi-b, priority: 1, rate_hz: 1, deadline_ms: -5}]\n", "deadline_ms must be"),
    ("sources: [{name: '', device: pi-b, priority: 1, rate_hz: 1}]\n", "name must be a non-empty string"),
    ("sources: [{name: a, device: pi-b, priority: 1, rate_hz: 1}, {name: a, device: jetson-a, priority: 2, "
     "rate_hz: 1}]\n", "source names must be unique; repeated: a"),
])
def test_every_malformed_file_is_a_clear_sources_error(tmp_path, text, message):
    with pytest.raises(SourcesError, match=message):
        load_sources(write(tmp_path, text), CLUSTER)


def test_a_missing_file_says_what_to_write(tmp_path):
    with pytest.raises(SourcesError, match="does not exist. Write a sources.yaml"):
        load_sources(tmp_path / "nope.yaml", CLUSTER)


def test_without_a_cluster_devices_are_not_checked(tmp_path):
    srcs = load_sources(write(tmp_path, "sources: [{name: a, device: anywhere, priority: 1, rate_hz: 1}]\n"))
    assert srcs.get("a").device == "anywhere"


def test_a_path_that_cannot_be_read_is_a_sources_error_not_a_traceback(tmp_path, monkeypatch):
    with pytest.raises(SourcesError, match="is a folder, not a sources file"):
        load_sources(tmp_path, CLUSTER)
    binary = tmp_path / "frame.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xfe\xff")
    with pytest.raises(SourcesError, match="is not a text file"):
        load_sources(binary, CLUSTER)
    p = write(tmp_path, GOOD)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(p), "read_text", denied)
    with pytest.raises(SourcesError, match="Cannot read .*Permission denied"):
        load_sources(p, CLUSTER)
