"""The model configs' JSON: one mixin for the frozen config dataclasses of every network.

``UNetConfig`` (unet/config.py), ``VAEConfig`` (ldm/vae_config.py) and ``CLIPTextConfig``
(ldm/clip_config.py) are written beside their weights as ``<name>.json`` and read back through it,
with every field checked before a network is built from it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, ClassVar


class JsonConfig:
    """``to_dict`` / ``from_dict`` for the frozen config dataclasses (U-Net, VAE, text encoder): the
    project's own ``<name>.json`` beside its weights. JSON has no tuples: lists come back as tuples.

    :meth:`check_fields` checks every field's type against its annotation and numbers against the
    class's ``LIMITS`` (name -> (lowest, highest)), before any arithmetic on them: a config read
    from a file fails there with the field's name, not with a ZeroDivisionError or a hang later."""

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {}

    def check_fields(self) -> None:
        name = type(self).__name__
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            items = value if kind.startswith("tuple[") else (value,)
            item_kind = kind[len("tuple["):].split(",")[0] if kind.startswith("tuple[") else kind
            if kind.startswith("tuple[") and not (isinstance(value, tuple) and value):
                raise ValueError(f"{name}.{f.name} must be a non-empty list of {item_kind}, got {value!r}")
            for item in items:
                ok = {"bool": isinstance(item, bool), "str": isinstance(item, str),
                      "int": isinstance(item, int) and not isinstance(item, bool),
                      "float": isinstance(item, (int, float)) and not isinstance(item, bool)
                      and math.isfinite(item)}.get(item_kind, True)
                if not ok:
                    raise ValueError(f"{name}.{f.name} must be {'a finite number' if item_kind == 'float' else 'an int' if item_kind == 'int' else item_kind}"
                                     f"{' (each entry)' if kind.startswith('tuple[') else ''}, got {value!r}")
                if f.name in self.LIMITS:
                    low, high = self.LIMITS[f.name]
                    if not low <= item <= high:
                        raise ValueError(f"{name}.{f.name} must lie in [{low:g}, {high:g}], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists them."""
        names = {f.name for f in fields(cls)}  # not __dataclass_fields__, which also lists the ClassVar LIMITS
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
