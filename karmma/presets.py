"""The YAML presets shipped inside the package (``karmma/configs/*.yaml``)."""

from __future__ import annotations

from pathlib import Path

from karmma.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (``demo_teacher``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"no config file or preset named {str(name_or_path)!r}; presets: {list_presets()}")
