"""What a stage is given: the resolved config, its upstream outputs, a temp output dir, and run ids."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from components.storage import Location, is_remote, join
from pipeline.config import PipelineConfig


@dataclass
class StageContext:
    """Inputs of one stage run. `out_dir` is scratch space that the executor publishes on success;
    `inputs` are the upstream outputs on this node's disk, `input_uris` the same as storage URIs."""

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
    final_uri: str = ""  # where the outputs are published (local path or storage URI)
    input_uris: dict[str, str] = field(default_factory=dict)  # upstream outputs as storage URIs
    store_uri: str = ""  # storage root; "" or a local path means work_dir's disk

    def input(self, stage: str) -> Path:
        """Output directory of upstream `stage`, on this node's disk."""
        return self.inputs[stage]

    def input_uri(self, stage: str, *parts: str) -> str:
        """Upstream `stage`'s output as a URI other processes and nodes can read (through `localize`)."""
        return join(self.input_uris.get(stage) or str(self.inputs[stage].resolve()), *parts)

    def share(self, path: Path) -> str:
        """A URI for a local file (an output, a cache entry) that Ray workers and trials on other nodes can
        read while this stage runs: uploaded next to the outputs when storage is remote, which replaces it
        when the stage publishes."""
        if not is_remote(self.final_uri):
            return str(Path(path).resolve())
        uri = join(self.final_uri, "_shared", Path(path).name)
        Location(uri).upload_file(path)
        return uri

    def ray_storage(self) -> str:
        """Storage for Ray Train/Tune checkpoints and results: shared storage when it is remote."""
        return join(self.store_uri, "ray_results") if is_remote(self.store_uri) else str(self.work_dir / "ray_results")

    def write_json(self, name: str, payload: dict) -> Path:
        """Write `payload` as indented JSON into the output dir."""
        path = self.out_dir / name
        path.write_text(json.dumps(payload, indent=2, sort_keys=True))
        return path


def read_json(path: Path) -> dict:
    """Read a JSON file written by a stage."""
    return json.loads(Path(path).read_text())
