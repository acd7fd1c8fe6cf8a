"""Decoding image files into one uint8 array with a worker pool, cached on disk.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, and threads
write straight into the shared output array, so nothing is pickled between workers.
Each image is centre-cropped to a square (a face dataset keeps the whole face) and
resized to ``image_size``; JPEG "draft" mode lets the decoder downscale by a power of two
first, several times cheaper for small outputs.

The cache is one ``.npy`` per list of files and size, written under a temporary name and
renamed when complete (a killed run never leaves half a cache), and read back memory-
mapped, so a dataset larger than RAM still works. Beside it, ``NAME.npy.sha256`` holds the
SHA-256 of the cache's bytes and of its source (each image file's name, size and
modification time); both are checked on every use, and a cache that fails either (flipped
bytes, changed images, no checksum) is decoded again, with a warning saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
_CHUNK = 64  # images per task: few enough futures for 200k files, small enough to balance
# Pillow's default limit (about 89 million pixels): images above it are refused by name.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# load_square refuses images above its limit itself; Pillow's warning just below that
# limit would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageFileError(ValueError):
    """An image file is missing or cannot be decoded."""


def _too_large(path: Path, max_pixels: int, size: str = "") -> ImageFileError:
    return ImageFileError(
        f"{path}: the image{size} has more pixels than the limit of {max_pixels} (a "
        "decompression bomb?); if it is genuine, raise the limit with the dataset option "
        "max_image_pixels=N"
    )


def load_square(
    path: Path, image_size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """One image as uint8 (3, image_size, image_size): centre square, resized. An image of
    more than ``max_pixels`` pixels is refused from its header, before it is decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise _too_large(path, max_pixels, f" ({width} x {height})")
            image.draft("RGB", (image_size, image_size))
            image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.resize(
                (image_size, image_size),
                Image.Resampling.BILINEAR,
                box=(left, top, left + side, top + side),
            )
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise ImageFileError(f"{path}: image file is missing") from None
    except Image.DecompressionBombError:  # Pillow's own limit, checked inside open()
        raise _too_large(path, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if isinstance(error, ImageFileError):
            raise
        raise ImageFileError(f"{path}: cannot decode the image ({error})") from None


@contextlib.contextmanager
def _pillow_limit() -> Iterator[None]:
    """Pillow's own limit off while we decode: :func:`load_square` applies ours from the
    image header, with the file's size in the message, and may be raised above Pillow's.
    The global is restored after, so other users of Pillow keep theirs."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_images(
    paths: Sequence[Path],
    *,
    image_size: int,
    workers: int,
    out: np.ndarray | None = None,
    description: str = "decoding images",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """All images as uint8 (N, 3, S, S), decoded by ``workers`` threads (0: inline)."""
    if out is None:
        out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)

    def work(start: int) -> int:
        stop = min(start + _CHUNK, len(paths))
        for index in range(start, stop):
            out[index] = load_square(paths[index], image_size, max_pixels=max_pixels)
        return stop - start

    starts = range(0, len(paths), _CHUNK)
    bar = tqdm(total=len(paths), desc=description, unit="img", disable=not progress)
    with bar, _pillow_limit():
        if workers <= 0:
            for start in starts:
                bar.update(work(start))
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                # Results come in order; the first failing chunk raises its error here.
                for done in pool.map(work, starts):
                    bar.update(done)
            finally:
                # On an error, drop the queued chunks rather than decode them all first.
                pool.shutdown(wait=True, cancel_futures=True)
    return out


def cached_images(
    paths: Sequence[Path],
    *,
    image_size: int,
    workers: int,
    cache_dir: Path | None,
    name: str,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """As :func:`decode_images`, through a cache file in ``cache_dir`` (None: no cache)."""
    description = f"{name}: decoding {len(paths)} images"
    if cache_dir is None:
        return decode_images(paths, image_size=image_size, workers=workers,
                             description=description, progress=progress, max_pixels=max_pixels)
    key = hashlib.sha1("\n".join(p.name for p in paths).encode(), usedforsecurity=False)
    path = cache_dir / f"{name}-{image_size}px-{len(paths)}-{key.hexdigest()[:12]}.npy"
    source = source_digest(paths)
    if path.is_file():
        problem = cache_problem(path, source)
        if problem is None:
            try:
                cached = np.load(path, mmap_mode="c")  # copy-on-write: file untouched
                if cached.shape == (len(paths), 3, image_size, image_size):
                    logger.info("%s: using cached images %s (checksum verified)", name, path)
                    return cached
                problem = f"shape {cached.shape}"
            except (OSError, ValueError) as error:
                problem = f"unreadable: {error}"
        logger.warning("%s: not using the cache %s (%s); decoding the images again",
                       name, path, problem)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        out = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.uint8, shape=(len(paths), 3, image_size, image_size)
        )
    except OSError as error:
        logger.warning("%s: cannot write a cache in %s (%s); decoding into memory",
                       name, cache_dir, error)
        return decode_images(paths, image_size=image_size, workers=workers,
                             description=description, progress=progress, max_pixels=max_pixels)
    try:
        decode_images(paths, image_size=image_size, workers=workers, out=out,
                      description=description, progress=progress, max_pixels=max_pixels)
        out.flush()
        del out
        # The checksum goes first: a cache is never in place without one.
        _write_checksum(path, {"content": file_digest(partial),
                               "source": source_digest(paths) or ""})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return np.load(path, mmap_mode="c")


def checksum_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".sha256")


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def source_digest(paths: Sequence[Path]) -> str | None:
    """SHA-256 of each image file's name, size and modification time: an image replaced
    or edited in place changes it, without reading every image on each run. None when no
    image is there any more (deleted once cached): the cache is then their only copy."""
    digest = hashlib.sha256()
    present = 0
    for file in paths:
        try:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            present += 1
        except OSError:
            digest.update(f"{file}\0missing\n".encode())
    return digest.hexdigest() if present else None


def cache_problem(cache: Path, source: str | None) -> str | None:
    """Why ``cache`` may not be used (None: its content and source checksums match)."""
    try:
        recorded = json.loads(checksum_path(cache).read_text(encoding="utf-8"))
        content, made_from = recorded["content"], recorded["source"]
    except FileNotFoundError:
        return "it has no checksum (made by an older version, or its writer was killed)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its checksum file is unreadable: {error}"
    if source is not None and made_from != source:
        return "the images changed since it was made"
    if file_digest(cache) != content:
        return "its content does not match its checksum: damaged"
    return None


def _write_checksum(cache: Path, values: dict[str, str]) -> None:
    """Written whole under a temporary name, then renamed into place."""
    target = checksum_path(cache)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            json.dump(values, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
