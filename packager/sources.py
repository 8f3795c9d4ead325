"""sources.yaml, read on the workstation against the cluster it feeds (docs/priority.md).

The values (`Source`, `Sources`) and their checks are in the core (`edgepart.sources`), since a plan
will carry them to the agents; reading YAML is the packager's, like cluster.yaml.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edgepart.errors import SourcesError
from edgepart.sources import Sources, sources_from_dict

from edgepart.packager.cluster import Cluster


def load_sources(path: str | Path, cluster: Cluster | None = None) -> Sources:
    """The sources of `path`; with `cluster`, every source's device must be one of its devices."""
    path = Path(path)
    if path.is_dir():
        raise SourcesError(f"{path} is a folder, not a sources file. Give the sources.yaml in it (see "
                           f"docs/priority.md) with --sources.")
    if not path.is_file():
        raise SourcesError(f"{path} does not exist. Write a sources.yaml (see docs/priority.md) and pass it "
                           f"with --sources.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourcesError(f"Cannot read {path}: {e.strerror or e}. Give a sources.yaml you can read "
                           f"with --sources.") from None
    except UnicodeDecodeError:
        raise SourcesError(f"{path} is not a text file (not UTF-8). Give a sources.yaml (see "
                           f"docs/priority.md) with --sources.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SourcesError(f"{path} is not valid YAML{where}: {what}. Fix it; docs/priority.md has an "
                           f"example.") from None
    devices = None if cluster is None else [d.name for d in cluster.devices]
    return sources_from_dict(data, devices, where=str(path))


__all__ = ["load_sources"]
