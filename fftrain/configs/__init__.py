"""The run configs shipped inside the package: `--config NAME` takes one of their names or a YAML path.

    resolve_config("six_datasets_r50")        # .../fftrain/configs/six_datasets_r50.yaml
    resolve_config("my_run.yaml")             # an existing path is taken as it is
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def packaged_configs() -> list[str]:
    """Names of the shipped configs (file names without .yaml), sorted."""
    return sorted(name[:-5] for name in os.listdir(_HERE) if name.endswith(".yaml"))


def resolve_config(name_or_path: str) -> str:
    """A path that exists as given; else the packaged config of that name (with or without .yaml);
    else the input unchanged (the loader then reports it as not found)."""
    if os.path.exists(name_or_path):
        return name_or_path
    name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if os.sep not in name and name in packaged_configs():
        return os.path.join(_HERE, f"{name}.yaml")
    return name_or_path
