"""What a stage is given: the resolved config, its upstream outputs, a temp output dir, and run ids."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import PipelineConfig


@dataclass
class StageContext:
    """Inputs of one stage run. `out_dir` is a temp dir that the runner renames into place on success."""

    cfg: PipelineConfig
    name: str
    fingerprint: str
    out_dir: Path
    inputs: dict[str, Path]
    work_dir: Path
    tracking_uri: str
    run_id: str
    parent_run_id: str
    upstream_run_ids: dict[str, str] = field(default_factory=dict)
    forced: bool = False  # --force: start afresh instead of resuming an interrupted run
    resume: bool = True  # continue interrupted work (a Tune campaign); False makes that an error

    def input(self, stage: str) -> Path:
        """Output directory of upstream `stage`."""
        return self.inputs[stage]

    def write_json(self, name: str, payload: dict) -> Path:
        """Write `payload` as indented JSON into the output dir."""
        path = self.out_dir / name
        path.write_text(json.dumps(payload, indent=2, sort_keys=True))
        return path


def read_json(path: Path) -> dict:
    """Read a JSON file written by a stage."""
    return json.loads(Path(path).read_text())
