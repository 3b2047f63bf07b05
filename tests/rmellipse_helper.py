"""Run by the rmellipse 0.4.5 venv's Python (see tests/test_rmellipse.py), never imported by ours.

``python rmellipse_helper.py ACTIONS.json`` performs each action with rmellipse's own code:

* ``{"do": "release", "root", "workspace", "title", "version", "folder"}``: what ``rme release``
  does, through its API: ``map_directory`` maps the folder (HDF5 files included),
  ``upload_blobs_and_update_mapping`` stores the blobs, ``upload_release_record`` the record;
* ``{"do": "download", "root", "workspace", "title", "version", "dest"}``: rmellipse's download
  (``get_release_records`` then ``download_release``) into ``dest``;
* ``{"do": "h5", "path", "scale"}``: an HDF5 file with a group, a dataset and attributes (h5py
  comes with rmellipse, not with our test dependencies).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path


def release(action: dict) -> None:
    from rmellipse.workflows.archive_interface import get_interface
    from rmellipse.workflows.extras import format_release_verions, map_directory

    arc = get_interface(action["root"])
    folder = Path(action["folder"])
    mapping = map_directory({}, folder)
    title = format_release_verions(action["title"], action["version"])
    with contextlib.redirect_stdout(io.StringIO()):  # its progress display
        arc.upload_blobs_and_update_mapping(release_title=title, release_title_versionless=action["title"],
                                            workspace=action["workspace"], project_mapping=mapping,
                                            project_directory=folder, max_threads=4, chunk_size=2**20)
    record = {"title": title, "title_versionless": action["title"], "version": action["version"],
              "workflow_config_path": "flows/main.rme.yml",
              "workflow": {"nodes": {"calibrate": {"inputs": ["raw"], "outputs": ["gains"]}}},
              "requirements": ["other-release-v1.0.0"], "project": mapping,
              "datasets": {"gains": {"path": "out/gains.csv"}}}
    arc.upload_release_record(record, action["workspace"])


def download(action: dict) -> None:
    from rmellipse.workflows.archive_interface import get_interface

    arc = get_interface(action["root"])
    records = arc.get_release_records(title_versionless=action["title"],
                                      version_expressions=["==" + action["version"]], workspace=action["workspace"])
    (record,) = records.values()
    with contextlib.redirect_stderr(io.StringIO()):
        arc.download_release(record, action["workspace"], 4, Path(action["dest"]), 2**20, progress_bar=False)


def h5(action: dict) -> None:
    import h5py

    Path(action["path"]).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(action["path"], "w") as f:
        f.attrs["site"] = "lab 2"
        group = f.create_group("sweep")
        group.attrs["unit"] = "V"
        group.create_dataset("gains", data=[float(i) * action["scale"] for i in range(64)])


def main() -> None:
    for action in json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")):
        {"release": release, "download": download, "h5": h5}[action["do"]](action)


if __name__ == "__main__":
    main()
