"""Your own images (``image-folder``): a folder of images and a CSV that labels them.

The CSV (option ``csv``, looked up in ``root`` first, then as given) has a header row and
the columns named by the options: ``path`` (always this name; relative to ``root``, and
refused if it leads outside it, by ``../`` or as an absolute path, unless
``allow_outside_root=true``), ``target`` and ``bias``; optionally ``split``, a column of
``train`` / ``valid`` / ``test``. A column named ``split`` is used without being asked
for, so rows a CSV designates as test never land in training; ``split=random`` ignores
it. Without a split column the rows are split at random (seeded) into ``valid_fraction``
and ``test_fraction`` of the rows and training for the rest.

Labels may be any strings or integers: each column's distinct values are sorted
(numerically when all are numbers) and coded 0..K-1; the names are kept as the
benchmark's ``target_names`` / ``bias_names``.

Evaluations: ``valid``, the validation rows as they are (model selection); ``biased_test``,
the test rows as they are; ``unbiased_test``, the test rows cut, per (target, bias) group
present, to the size of the smallest such group (seeded, as CelebA does). Without
``bias`` (a CSV with no bias column) there is no ``unbiased_test``, every bias label is 0,
and a method that reads bias labels is trained on pseudo ones (``--bias-labels pseudo``).

Images are decoded as CelebA's are (centre square, resized to ``image_size``, uint8,
threaded, cached on disk under ``cache_dir``, default ``<root>/endebias-cache``) and
normalised with the ImageNet statistics; the model is ``resnet18`` unless another is
given. An image larger than ``max_image_pixels`` (default: Pillow's limit, about 89
million pixels) is refused, naming the file, as a possible decompression bomb.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from endebias.data import Benchmark, Split, register_dataset, split_sizes
from endebias.data.celeba import balanced, imagenet_normalise
from endebias.data.csv_table import TableError, read_table
from endebias.data.image_files import DEFAULT_MAX_PIXELS, cached_images
from endebias.data.mnist import resolve_data_dir
from endebias.data.tabular import _pools

logger = logging.getLogger(__name__)

PATH_COLUMN = "path"
DEFAULT_SPLIT_COLUMN = "split"
SPLITS = ("train", "valid", "test")
_STREAM = {"split": 0, "test": 1}  # one seeded generator per random choice


def _folder(root: str | Path | None, data_dir: str | Path | None) -> Path:
    return Path(root).expanduser() if root is not None else resolve_data_dir(data_dir)


def _csv_path(csv: str | Path, folder: Path) -> Path:
    given = Path(csv).expanduser()
    # "csv=labels.csv" names the file beside the images; an existing path works as given.
    if not given.is_absolute() and (folder / given).is_file():
        return folder / given
    return given


def _split_codes(values: list[str], lines: list[int], csv: Path, column: str) -> np.ndarray:
    """0 train, 1 valid, 2 test for each row; any other value is named with its line."""
    codes = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        if value.lower() not in SPLITS:
            raise ValueError(
                f"{csv}: split column {column!r} must hold train, valid or test; line "
                f"{lines[index]} has {value!r}"
            )
        codes[index] = SPLITS.index(value.lower())
    return codes


def _resolve_files(
    paths: list[str], lines: list[int], folder: Path, csv: Path, allow_outside_root: bool
) -> list[Path]:
    """Each CSV path taken inside ``folder``: a CSV from elsewhere must not make us read any
    file on the machine (``../`` or an absolute path), unless the user opts in with
    ``allow_outside_root=true``. The check is on the path as written, normalised: symbolic
    links inside the root are the root owner's choice and are followed."""
    root = Path(os.path.abspath(folder))
    files = []
    for text, line in zip(paths, lines, strict=True):
        file = Path(os.path.normpath(root / text))  # an absolute path replaces the folder
        if not allow_outside_root and not file.is_relative_to(root):
            raise ValueError(
                f"{csv}: line {line}: path {text!r} leads outside the image root {root}; "
                "move the image under the root, or pass allow_outside_root=true"
            )
        files.append(file)
    return files


@register_dataset("image-folder")
def build_image_folder(
    *,
    csv: str | Path | None = None,
    target: str | None = None,
    bias: str | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    image_size: int = 128,
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
    allow_outside_root: bool = False,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    **unknown: Any,
) -> Benchmark:
    """A labelled image folder as a benchmark; see the module text for the options.
    ``root`` defaults to the data folder; ``workers`` to the CPU count."""
    if unknown:
        raise ValueError(f"image-folder: unknown option(s) {', '.join(sorted(unknown))}")
    if csv is None or target is None:
        raise ValueError("image-folder needs the options csv=<file>, target=<column> (and "
                         "bias=<column> where the table has one)")
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) \
            or max_image_pixels < 1:
        raise ValueError(f"image-folder: max_image_pixels must be a positive integer, "
                         f"got {max_image_pixels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image-folder: image_size must be an integer >= 8, got {image_size!r}")
    folder = _folder(root, data_dir)
    if not folder.is_dir():  # else the CSV's "no such file" hides the real culprit
        raise ValueError(f"image-folder: the image root {folder} is not an existing folder")
    table = read_table(_csv_path(csv, folder))
    paths = table.column(PATH_COLUMN, "path")
    targets, target_names = table.categories(target, "target")
    if bias is None:  # no bias labels: one group; EnD needs --bias-labels pseudo
        biases, bias_names = np.zeros(len(table), dtype=np.int64), ["all"]
    else:
        biases, bias_names = table.categories(bias, "bias")
    if len(target_names) < 2:
        raise TableError(f"{table.path}: target column {target!r} has a single value "
                         f"{target_names[0]!r}; a classifier needs two or more")
    for index, text in enumerate(paths):
        if not text:
            raise TableError(f"{table.path}: path column is empty on line {table.lines[index]}")
    files = _resolve_files(paths, table.lines, folder, table.path, allow_outside_root)
    for file in files:
        if not file.is_file():  # before any decoding: one clear line, not a worker traceback
            raise ValueError(f"{file}: image file is missing")

    def generator(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed * len(_STREAM) + _STREAM[name])

    if split is None and DEFAULT_SPLIT_COLUMN in table.columns:
        split = DEFAULT_SPLIT_COLUMN
        logger.info("image-folder: rows split by the CSV's %r column (split=random to ignore "
                    "it)", split)
    if split == "random":
        split = None
    if split is not None:
        codes = _split_codes(table.column(split, "split"), table.lines, table.path, split)
        rows = {name: np.flatnonzero(codes == code) for code, name in enumerate(SPLITS)}
    else:
        train_rows, valid_rows, test_rows = _pools(
            len(table), valid_fraction, test_fraction, generator("split")
        )
        rows = {"train": train_rows, "valid": valid_rows, "test": test_rows}
    empty = [name for name, chosen in rows.items() if len(chosen) == 0]
    if empty:
        raise ValueError(f"{table.path}: the {', '.join(empty)} split(s) have no rows")

    workers = (os.cpu_count() or 1) if workers is None else workers
    cache_path = None
    if cache:
        cache_path = Path(cache_dir).expanduser() if cache_dir else folder / "endebias-cache"

    def images(name: str, chosen: np.ndarray) -> Tensor:
        chosen_files = [files[i] for i in chosen]
        # The image cache is keyed by file names only; add the full paths to the name so
        # that cat/1.png and dog/1.png never share a cache file.
        key = hashlib.sha1("\n".join(map(str, chosen_files)).encode(), usedforsecurity=False)
        array = cached_images(chosen_files, image_size=image_size, workers=workers,
                              cache_dir=cache_path, name=f"image-folder-{name}-"
                              f"{key.hexdigest()[:8]}", progress=progress,
                              max_pixels=max_image_pixels)
        return torch.from_numpy(array)

    def make_split(inputs: Tensor, chosen: np.ndarray) -> Split:
        made = Split(inputs, torch.from_numpy(targets[chosen]), torch.from_numpy(biases[chosen]))
        return made.to(device) if device is not None else made

    test_images = images("test", rows["test"])
    evaluations = {
        "valid": make_split(images("valid", rows["valid"]), rows["valid"]),
        "biased_test": make_split(test_images, rows["test"]),
    }
    if bias is not None:
        groups = targets * len(bias_names) + biases
        cut = balanced(rows["test"], groups, generator("test"))
        position = {row: i for i, row in enumerate(rows["test"])}
        local = torch.tensor([position[r] for r in cut], dtype=torch.long)
        if len(np.unique(groups[rows["test"]])) < len(target_names) * len(bias_names):
            logger.warning("image-folder: the test split lacks some (target, bias) groups; "
                           "unbiased_test balances the groups it has")
        evaluations["unbiased_test"] = make_split(test_images[local], cut)
    train = make_split(images("train", rows["train"]), rows["train"])
    logger.info("image-folder: %s", split_sizes(train, evaluations))
    return Benchmark(
        name="image-folder",
        train=train,
        evaluations=evaluations,
        num_targets=len(target_names),
        num_biases=len(bias_names),
        input_shape=(3, image_size, image_size),
        prepare=imagenet_normalise,
        target_names=target_names,
        bias_names=bias_names,
        info={"csv": str(table.path), "folder": str(folder), "target": target, "bias": bias,
              "split": split, "image_size": image_size, "seed": seed},
        has_bias_labels=bias is not None,
    )


# Images at image_size: the model this benchmark is made for (see the module text).
build_image_folder.default_model = "resnet18"  # type: ignore[attr-defined]
