"""CelebA with gender as the bias (the EnD paper's Table 2): target ``Blond_Hair`` or
``Heavy_Makeup``, bias ``Male``.

Files, in a user folder (``root``; else ``<data_dir>/celeba`` or ``<data_dir>`` itself,
the layout torchvision uses): ``list_attr_celeba.txt`` (a count line, a line of 40
attribute names, then one line per image: file name and 40 values of 1 or -1),
``list_eval_partition.txt`` (file name and 0 train / 1 valid / 2 test) and the images in
``img_align_celeba/``.

Labels: target 1 when the attribute is 1, else 0; bias 1 for male, 0 for female. The
paper's *bias-conflicting* groups are those against the stereotype (blond or made-up
men, and women neither blond nor made up): the rows where target == bias.

Splits (the official partition): ``train`` (162,770 images, or a seeded ``train_size``
of them for smoke runs); ``valid``, the paper's "unbiased" set: the official validation
split cut, per (target, gender) group, to the size of its smallest group (seeded), used
for model selection as in the paper; ``valid_conflicting``, its bias-conflicting groups
(the paper's second figure); ``unbiased_test``, the official test split cut the same
way, never used for selection; ``biased_test``, the full official test split, whose
group-averaged (``acc_unbiased``) and worst-group accuracies the trainer reports.

Images: centre square, resized to ``image_size`` (default 128: the whole training split
is then 8 GB as uint8, cached on disk and memory-mapped; 224, the ImageNet size, needs
25 GB) and stored uint8; ``prepare`` applies ImageNet normalisation, as pretrained
ResNet weights expect. No augmentation (the contract applies ``prepare`` alike to all
splits).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from endebias.data import Benchmark, Split, register_dataset, split_sizes
from endebias.data.image_files import DEFAULT_MAX_PIXELS, cached_images
from endebias.data.mnist import resolve_data_dir

logger = logging.getLogger(__name__)

TARGETS = ("Blond_Hair", "Heavy_Makeup")
BIAS = "Male"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
_STREAM = {"train": 0, "valid": 1, "test": 2}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CelebAFileError(ValueError):
    """A CelebA list file is missing or malformed."""


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CelebAFileError(f"{path}: not a text file (byte {error.object[error.start]:#04x} "
                              f"at offset {error.start} is not UTF-8)") from None


def read_attributes(path: Path, wanted: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """File names and the ``wanted`` attributes as int8 (N, len(wanted)) of 1 / -1."""
    if not path.is_file():
        raise CelebAFileError(f"{path}: CelebA attribute file not found")
    lines = _text(path).splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise CelebAFileError(f"{path}: line 1 must hold the number of images")
    count, names = int(lines[0]), lines[1].split()
    missing = [name for name in wanted if name not in names]
    if missing:
        raise CelebAFileError(f"{path}: line 2 names no attribute {missing[0]!r}")
    columns = [names.index(name) + 1 for name in wanted]
    files: list[str] = []
    values = np.empty((count, len(wanted)), dtype=np.int8)
    rows = [(number, line) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != count:
        raise CelebAFileError(
            f"{path}: line 1 announces {count} images, the file lists {len(rows)}"
        )
    for index, (number, line) in enumerate(rows):
        fields = line.split()
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise CelebAFileError(
                f"{path}: line {number}: expected a file name and {len(names)} values of 1 or"
                f" -1, got {line.strip()[:80]!r}"
            )
        files.append(fields[0])
        values[index] = [int(fields[c]) for c in columns]
    return files, values


def read_partition(path: Path, files: list[str]) -> np.ndarray:
    """The official partition (0 train, 1 valid, 2 test) of each of ``files``."""
    if not path.is_file():
        raise CelebAFileError(f"{path}: CelebA partition file not found")
    partition: dict[str, int] = {}
    for number, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise CelebAFileError(
                f"{path}: line {number}: expected a file name and 0, 1 or 2, got "
                f"{line.strip()[:80]!r}"
            )
        partition[fields[0]] = int(fields[1])
    absent = [name for name in files if name not in partition]
    if absent:
        raise CelebAFileError(f"{path}: no partition for {absent[0]} ({len(absent)} images)")
    return np.array([partition[name] for name in files], dtype=np.int64)


def celeba_folder(root: str | Path | None, data_dir: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    base = resolve_data_dir(data_dir)
    return base / "celeba" if (base / "celeba" / ATTRIBUTES_FILE).is_file() else base


def balanced(rows: np.ndarray, groups: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``rows`` cut, per group, to the size of the smallest group (seeded), sorted."""
    members = [rows[groups[rows] == g] for g in np.unique(groups[rows])]
    size = min(len(m) for m in members)
    kept = [m[torch.randperm(len(m), generator=generator)[:size].numpy()] for m in members]
    return np.sort(np.concatenate(kept))


def imagenet_normalise(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) → floats normalised with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@register_dataset("celeba")
def build_celeba(
    *,
    target: str = "Blond_Hair",
    root: str | Path | None = None,
    image_size: int = 128,
    train_size: int | None = None,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    **unknown: Any,
) -> Benchmark:
    """CelebA ``target`` vs gender; see the module text for the splits and options.
    ``cache_dir`` defaults to ``<folder>/endebias-cache``; ``workers`` to the CPU count;
    an image above ``max_image_pixels`` is refused by name (a decompression bomb)."""
    if unknown:
        raise ValueError(f"celeba: unknown option(s) {', '.join(sorted(unknown))}")
    if target not in TARGETS:
        raise ValueError(f"celeba: target must be one of {', '.join(TARGETS)}, got {target!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"celeba: image_size must be an integer >= 32, got {image_size!r}")
    folder = celeba_folder(root, data_dir)
    files, attributes = read_attributes(folder / ATTRIBUTES_FILE, (target, BIAS))
    partition = read_partition(folder / PARTITION_FILE, files)
    targets = (attributes[:, 0] == 1).astype(np.int64)
    biases = (attributes[:, 1] == 1).astype(np.int64)
    groups = targets * 2 + biases

    rows = {name: np.flatnonzero(partition == code) for name, code in PARTITIONS.items()}
    for name, chosen in rows.items():
        present = np.bincount(groups[chosen], minlength=4)
        if name != "train" and not present.all():  # balancing needs every group
            empty = int(np.argmin(present))
            raise ValueError(
                f"{folder / ATTRIBUTES_FILE}: the {name} split has no image with "
                f"{target}={1 if empty // 2 else -1} and Male={1 if empty % 2 else -1}"
            )
    if train_size is not None:
        if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
            raise ValueError(f"celeba: train_size must be a positive integer, got {train_size!r}")
        pick = torch.randperm(len(rows["train"]), generator=torch.Generator().manual_seed(seed))
        rows["train"] = np.sort(rows["train"][pick[:train_size].numpy()])

    workers = (os.cpu_count() or 1) if workers is None else workers
    cache_path = None
    if cache:
        cache_path = Path(cache_dir).expanduser() if cache_dir else folder / "endebias-cache"

    def images(name: str, chosen: np.ndarray) -> Tensor:
        paths = [folder / IMAGE_FOLDER / files[i] for i in chosen]
        array = cached_images(paths, image_size=image_size, workers=workers,
                              cache_dir=cache_path, name=f"celeba-{name}", progress=progress,
                              max_pixels=max_image_pixels)
        return torch.from_numpy(array)

    def split(inputs: Tensor, chosen: np.ndarray) -> Split:
        made = Split(inputs, torch.from_numpy(targets[chosen]), torch.from_numpy(biases[chosen]))
        return made.to(device) if device is not None else made

    def generator(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed * len(_STREAM) + _STREAM[name])

    train = split(images("train", rows["train"]), rows["train"])
    evaluations: dict[str, Split] = {}
    for name, prefix in (("valid", "valid"), ("test", "unbiased_test")):
        full = images(name, rows[name])  # decoded (and cached) whole, whatever the seed
        position = {row: i for i, row in enumerate(rows[name])}
        cut = balanced(rows[name], groups, generator(name))
        local = torch.tensor([position[r] for r in cut], dtype=torch.long)
        evaluations[prefix] = split(full[local], cut)
        if name == "valid":
            conflicting = targets[cut] == biases[cut]
            evaluations["valid_conflicting"] = split(full[local[conflicting]], cut[conflicting])
        else:
            evaluations["biased_test"] = split(full, rows[name])
    logger.info("celeba %s: %s", target, split_sizes(train, evaluations))
    return Benchmark(
        name="celeba",
        train=train,
        evaluations=evaluations,
        num_targets=2,
        num_biases=2,
        input_shape=(3, image_size, image_size),
        prepare=imagenet_normalise,
        target_names=[f"not {target}", target],
        bias_names=["female", "male"],
        # The stereotype: blond / made-up women and the others men (target != male).
        aligned=torch.tensor([[False, True], [True, False]]),
        info={"target": target, "bias": BIAS, "image_size": image_size, "folder": str(folder),
              "seed": seed, "train_size": train_size},
    )


# The EnD paper's CelebA model (ResNet-18 with the Tanh'd, normalised pooled features).
build_celeba.default_model = "resnet18"  # type: ignore[attr-defined]
