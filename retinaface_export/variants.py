"""Registry of RetinaFace variants, read from the TOML files in ``configs/`` (package data)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

from retinaface_export.anchors import AnchorConfig
from retinaface_export.errors import UnknownVariantError


@dataclass(frozen=True)
class Variant:
    """One architecture: what to build and how its outputs decode. Keys are documented in configs/."""

    name: str
    upstream_name: str
    backbone: str
    return_layers: tuple[str, ...]
    fpn_in_channels: tuple[int, ...]
    out_channels: int
    fpn_leaky_slope: float
    anchors: AnchorConfig

    def with_anchors(self, anchors: AnchorConfig) -> Variant:
        """The same architecture decoding with other anchors (a checkpoint trained with them)."""
        return replace(self, anchors=anchors)


def _variant_from_toml(text: str) -> Variant:
    data = tomllib.loads(text)
    return Variant(
        name=data["name"],
        upstream_name=data["upstream_name"],
        backbone=data["backbone"],
        return_layers=tuple(data["return_layers"]),
        fpn_in_channels=tuple(data["fpn_in_channels"]),
        out_channels=int(data["out_channels"]),
        fpn_leaky_slope=float(data["fpn_leaky_slope"]),
        anchors=AnchorConfig.from_mapping(data["anchors"]),
    )


@cache
def _registry() -> dict[str, Variant]:
    folder = resources.files("retinaface_export.configs")
    variants = [
        _variant_from_toml(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    ]
    return {variant.name: variant for variant in sorted(variants, key=lambda v: v.name)}


def list_variants() -> list[str]:
    """Registered variant names, sorted."""
    return list(_registry())


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``.

    Raises:
        UnknownVariantError: no such variant; the message lists the valid names.
    """
    try:
        return _registry()[name]
    except KeyError:
        valid = ", ".join(list_variants())
        raise UnknownVariantError(f"unknown variant {name!r}; valid variants: {valid}") from None
