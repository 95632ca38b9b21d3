"""Where images referenced by name come from: a folder, or a zip read in place.

The zip is never unpacked: members are read with zipfile on demand, each worker
process opening its own handle (a ZipFile cannot be shared across processes).
"""

import zipfile
import zlib
from pathlib import Path

from .documents import resolve_image
from .errors import BadInput, UsageError


class MissingImage(Exception):
    """A referenced image is not there; `where` is the path or zip member looked for."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


class FolderImages:
    """Names relative to `root` (or absolute)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def read(self, name: str) -> tuple[str, str | bytes]:
        """(where, path or bytes for imageio.shard_image); MissingImage if absent."""
        path = resolve_image(name, self.root)
        if not path.is_file():
            raise MissingImage(str(path))
        return str(path), str(path)


class ZipImages:
    """Names are member paths. If every member sits under one top folder (a zip made of
    a folder, e.g. `images/...`), names without that folder are found too."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path)  # noqa: SIM115 (lives as long as the worker)
        self.names = {i.filename for i in self.zip.infolist() if not i.is_dir()}
        tops = {n.split("/", 1)[0] if "/" in n else "" for n in self.names}
        self.prefix = tops.pop() + "/" if len(tops) == 1 and "" not in tops else ""

    def read(self, name: str) -> tuple[str, bytes]:
        member = name if name in self.names else self.prefix + name
        where = f"{self.path}:{member}"
        if member not in self.names:
            raise MissingImage(f"{self.path}:{name}")
        try:
            return where, self.zip.read(member)
        except (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError) as e:
            raise BadInput(f"{where}: cannot read from the zip: {e}", "unreadable_image") from e


def open_images(spec: dict):
    """spec = {"kind": "dir" | "zip", "path": ...} (picklable, sent to workers)."""
    return ZipImages(spec["path"]) if spec["kind"] == "zip" else FolderImages(spec["path"])


def image_spec(path: Path) -> dict:
    """Check an --images argument in the parent process; one clear error if unusable."""
    path = Path(path)
    if path.is_dir():
        return {"kind": "dir", "path": str(path)}
    if path.is_file():
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise UsageError(f"images {path} is neither a folder nor a readable zip: {e}") from e
        return {"kind": "zip", "path": str(path)}
    raise UsageError(f"image folder or zip {path} does not exist")
