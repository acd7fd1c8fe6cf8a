"""K SimpleConvNets trained as one packed network over one shared batch.

The K members of a pack differ only in their loss weights, so they see the same images in
the same order. Their networks become one:

* the first convolution reads the shared input with ``K * C1`` output channels (member m
  owns output channels ``m*C1 .. (m+1)*C1``); every later convolution is grouped
  (``groups=K``), so member m's channels only ever see member m's channels;
* BatchNorm, ReLU/Tanh, max-pooling and average pooling act per channel, so they pack as
  they are;
* the pooled features are viewed as ``(B, K, F)``, L2-normalised per member, and each
  member has its own classifier (a ``(K, classes, F)`` weight).

Every packed tensor is the members' tensors concatenated along dimension 0 (stacked for
the classifier), in the same parameter order and under the same names as the solo model,
so :func:`member_state` and :func:`join_states` map weights, buffers and Adam's
per-parameter state exactly to and from the solo format. The loss is the sum of the
members' losses, so each member's gradient is its solo gradient; Adam (with its L2 weight
decay) updates element by element, so each member's update is its solo update.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from endebias.methods import Method, OptimizerGroup, method_class, method_names
from endebias.models import init_conv_and_norm
from endebias.training.config import TrainConfig

PACKABLE_MODELS = ("simple-conv",)
SHARED = "num_batches_tracked"  # one count per BatchNorm, the same for every member
STACKED = ".fc."  # the per-member classifier: stacked, not concatenated


class PackError(ValueError):
    """Trials that cannot be trained as one pack."""


def check_packable(config: TrainConfig) -> None:
    """Raise :class:`PackError` (one line) unless the config's model and method can pack."""
    if config.model not in PACKABLE_MODELS:
        raise PackError(
            f"--pack trains model {', '.join(PACKABLE_MODELS)} only, not {config.model!r}; "
            "run this sweep's agents without --pack"
        )
    if config.method not in packable_methods():
        raise PackError(
            f"--pack trains methods {', '.join(packable_methods())} only, not "
            f"{config.method!r}; run this sweep's agents without --pack"
        )
    if getattr(config, "bias_labels", "given") != "given":
        raise PackError("--pack trains with the dataset's bias labels only, not pseudo labels; "
                        "run this sweep's agents without --pack")
    if config.save_features:
        raise PackError("--pack does not save per-epoch features (save_features); "
                        "run this sweep's agents without --pack")
    layer = config.method_options.get("layer")
    if layer not in (None, "pattern_norm"):
        raise PackError(f"--pack reads the features at pattern_norm only, not {layer!r}")


def packable_methods() -> list[str]:
    """The registered methods that can train as members of a pack (``Method.packable``)."""
    return [name for name in method_names() if method_class(name).packable]


def pack_key(config: TrainConfig) -> str:
    """Trials with equal keys can share every batch: everything but the method's options
    (seed, data, model, optimiser, schedule, device...) must be the same."""
    values = config.to_dict()
    values.pop("method_options")
    return json.dumps(values, sort_keys=True)


class PackedLinear(nn.Module):
    """K independent linear layers: ``(B, K, F) -> (B, K, out)``."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bkf,kof->bko", x, self.weight) + self.bias


class PackedSimpleConvNet(nn.Module):
    """``members`` SimpleConvNets as one network; ``forward`` returns per-member logits
    ``(B, K, classes)`` and normalised features ``(B, K, F)``."""

    def __init__(
        self,
        *,
        members: int,
        num_classes: int,
        in_channels: int,
        channels: Sequence[int],
        kernel_size: int,
        pool_after: Sequence[int] = (),
        normalize_features: bool = True,
    ) -> None:
        super().__init__()
        self.members = members
        # False: ReBias's variant, the classifier on the raw pooled features (SimpleConvNet).
        self.normalize_features = normalize_features
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            activation = nn.Tanh() if index == len(channels) - 1 else nn.ReLU()
            # Same module positions as SimpleConvNet, so the state-dict names match.
            conv = (
                nn.Conv2d(previous, members * width, kernel_size, padding=kernel_size // 2)
                if index == 0
                else nn.Conv2d(
                    members * previous, members * width, kernel_size,
                    padding=kernel_size // 2, groups=members,
                )
            )
            layers += [conv, nn.BatchNorm2d(members * width), activation]
            if index in pool_after:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = PackedLinear(members, previous, num_classes)
        self.features = previous
        init_conv_and_norm(self)  # overwritten by the members' weights in practice

    def forward(self, x: Tensor, detached: Sequence[bool] = ()) -> tuple[Tensor, Tensor]:
        """``detached``: per member, whether its classifier reads its features detached
        (the classifier then learns from the loss alone, the encoder not from it)."""
        pooled = self.pool(self.blocks(x)).reshape(x.shape[0], self.members, self.features)
        # SimpleConvNet's L2Normalize, per member (same eps).
        features = nn.functional.normalize(pooled, dim=2, eps=1e-12)
        read = features if self.normalize_features else pooled
        if any(detached):
            mask = torch.tensor(list(detached), device=x.device)[None, :, None]
            read = torch.where(mask, read.detach(), read)
        return self.fc(read), features


def _rule(name: str) -> str:
    if name.endswith(SHARED):
        return "shared"
    return "stacked" if STACKED in f".{name}" else "cat"


def split_tensor(name: str, value: Tensor, member: int, members: int) -> Tensor:
    """Member ``member``'s part of the packed tensor ``name`` (a parameter, buffer, or
    Adam state of that parameter)."""
    rule = _rule(name)
    if rule == "shared" or value.dim() == 0:
        return value.clone()
    if rule == "stacked":
        return value[member].clone()
    return value.chunk(members, dim=0)[member].clone()


def join_tensors(name: str, values: list[Tensor]) -> Tensor:
    rule = _rule(name)
    if rule == "shared" or values[0].dim() == 0:
        return values[0].clone()
    return torch.stack(values) if rule == "stacked" else torch.cat(values)


def member_state(state: dict[str, Tensor], member: int, members: int) -> dict[str, Tensor]:
    return {name: split_tensor(name, value, member, members) for name, value in state.items()}


def join_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {name: join_tensors(name, [s[name] for s in states]) for name in states[0]}


def member_optimizer_state(
    state: dict[str, Any], names: list[str], member: int, members: int
) -> dict[str, Any]:
    """A packed Adam ``state_dict`` cut to one member's, in the solo format (parameters
    numbered in the same order, ``names[i]`` naming parameter i)."""
    per_param = {
        index: {k: split_tensor(names[index], v, member, members) for k, v in entry.items()}
        for index, entry in state["state"].items()
    }
    return {"state": per_param, "param_groups": copy.deepcopy(state["param_groups"])}


def join_optimizer_states(states: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    first = states[0]
    per_param = {
        index: {key: join_tensors(names[index], [s["state"][index][key] for s in states])
                for key in entry}
        for index, entry in first["state"].items()
    }
    return {"state": per_param, "param_groups": copy.deepcopy(first["param_groups"])}


class PackedMethod(nn.Module):
    """The packed network and each member's loss, its solo method's ``output_loss`` on the
    member's logits and normalised features (vanilla, EnD, FairKL: ``Method.packable``).
    ``solos`` are the members' own methods: their losses, and the solo state format."""

    def __init__(self, model: PackedSimpleConvNet, solos: Sequence[Method]) -> None:
        super().__init__()
        self.model = model
        # Which methods may pack is check_packable's one check (PackedStepper calls it).
        # A plain list: the solos' own weights are not the pack's (its state is joined).
        self.solos = list(solos)
        self.detached = [s.detaches_classifier for s in solos]
        self.num_targets = solos[0].num_targets
        self.num_biases = solos[0].num_biases

    def networks(self) -> list[nn.Module]:
        """What ``--compile`` compiles: the one packed network."""
        return [self.model]

    @property
    def members(self) -> int:
        return self.model.members

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)[0]

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        return {"model": OptimizerGroup(list(self.parameters()))}

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Per-member losses ``(K,)``, logits ``(B, K, classes)`` and loss parts ``(K,)``."""
        logits, features = self.model(inputs, self.detached)
        losses, parts = [], []
        if features.dtype in (torch.bfloat16, torch.float16):
            features = features.float()  # the solo methods' losses run in float32 too
        for member, solo in enumerate(self.solos):
            loss, member_parts = solo.output_loss(
                logits[:, member], features[:, member], targets, biases)
            losses.append(loss)
            parts.append(member_parts)
        # One method per pack (pack_key), so every member logs the same parts.
        stacked = {key: torch.stack([p[key] for p in parts]) for key in parts[0]}
        return torch.stack(losses), logits, stacked


def build_packed(
    solos: Sequence[Method], states: Sequence[dict[str, Tensor]], *, model_options: dict[str, Any],
    num_classes: int, in_channels: int,
) -> PackedMethod:
    """A pack of ``solos`` (their methods) holding ``states`` (their solo ``state_dict``s)."""
    options = {"channels": (16, 32, 64, 128), "kernel_size": 7, "pool_after": (), **model_options}
    model = PackedSimpleConvNet(
        members=len(solos), num_classes=num_classes, in_channels=in_channels,
        channels=tuple(options["channels"]), kernel_size=options["kernel_size"],
        pool_after=tuple(options["pool_after"]),
        normalize_features=options.get("normalize_features", True),
    )
    packed = PackedMethod(model, solos)
    packed.load_state_dict(join_states(list(states)))
    return packed
