"""One reproducible ``.tar`` of an OpenVINO IR (``model.xml`` + ``model.bin``), the single file a
ModelVariant's ``artifact`` names and checksums (the worker verifies, then unpacks it).

    python -m model_catalog.tools.ir_archive yolov8n-pose_int8_openvino_model/ \
        yolov8n-pose_int8_openvino.tar

The archive holds only the IR's ``.xml`` and ``.bin`` (a metadata.yaml beside them is left
out), sorted, with zeroed times and owners, so the same IR always gives the same SHA-256.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from kubevision.worker.models import sha256_of


def archive(folder: Path, out: Path) -> str:
    """Write the archive; returns its SHA-256 (for ``spec.artifact.sha256``)."""
    members = sorted(p for p in folder.iterdir() if p.suffix in (".xml", ".bin"))
    if [p.suffix for p in members].count(".xml") != 1:
        raise SystemExit(f"{folder} must hold exactly one .xml IR (with its .bin)")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with path.open("rb") as data:
                tar.addfile(info, data)
    return sha256_of(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_catalog.tools.ir_archive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("folder", type=Path, help="folder of the IR (.xml and .bin)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(f"wrote {args.out}\nsha256: {archive(args.folder, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
