"""Checkpoints: one ``.npz`` per model, written atomically, checked on load.

A checkpoint holds the parameters (``param/<layer>.<name>``), any extra arrays (the
optimiser's ``momentum/...``) and a JSON header: format version, network kind
(``fast_rcnn`` uses selective-search proposals, ``faster_rcnn`` its own RPN, whose
``RPNConfig`` is recorded as ``rpn``), its ``ModelConfig``, and whatever the caller
declares (class names, the ``Preprocessing`` detection needs, the training state for an
exact resume).
"""

import json
import os
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from minircnn.cli import InputError
from minircnn.config import config_from_dict
from minircnn.faster_rcnn import FasterRCNN, RPNConfig
from minircnn.model import Classifier, FastRCNN, ModelConfig

CHECKPOINT_VERSION = 2  # 2: declared "preprocessing" replaced version 1's free-form keys
NETWORKS = {"classifier": Classifier, "fast_rcnn": FastRCNN, "faster_rcnn": FasterRCNN}


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message starts with its path."""


def save_checkpoint(path, model, header: dict, arrays: dict | None = None) -> Path:
    """Write ``model``'s parameters, its config and ``header`` (JSON-able) plus ``arrays``,
    atomically: to a temporary file in the same folder, then renamed over ``path``, so a
    crash mid-write never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"version": CHECKPOINT_VERSION, "kind": model.kind, "config": asdict(model.config)}
    if hasattr(model, "proposal_method"):  # a detector: where its proposals come from
        full["proposals"] = model.proposal_method
    if isinstance(model, FasterRCNN):  # from its own RPN: how it makes them
        full["rpn"] = asdict(model.rpn_config)
    full.update(header)
    payload = {f"param/{k}": v for k, v in model.params().items()}
    payload.update(arrays or {})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, header=np.array(json.dumps(full)), **payload)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header dict, arrays) of a checkpoint. Raises FileNotFoundError when it is missing
    and CheckpointError (naming the file) when it is truncated, not a zip, not a minircnn
    checkpoint or from another format version."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    # an .npz is a zip whose directory is at its end: a partial copy has none, and an
    # .npy or any other file would otherwise reach np.load's other readers
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a zip (.npz) file; truncated, or not a checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise CheckpointError(f"{path}: not a minircnn checkpoint (no header)")
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not an .npz file: {err})"
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a minircnn checkpoint (header is not a JSON object)")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('version')}, this minircnn "
            f"reads version {CHECKPOINT_VERSION}; train the model again"
        )
    return header, arrays


def checkpoint_config(header: dict, path, expected: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig a checkpoint header records; with ``expected``, a different one is
    refused, naming the fields that differ."""
    try:
        config = config_from_dict(ModelConfig, header["config"])
    except (KeyError, TypeError, ValueError) as err:  # missing, unknown or invalid fields
        raise CheckpointError(f"{path}: no usable model configuration ({err!r})") from err
    if expected is not None and config != expected:
        diffs = [
            f"{f.name}: {getattr(config, f.name)} in the checkpoint, "
            f"{getattr(expected, f.name)} here"
            for f in fields(ModelConfig)
            if getattr(config, f.name) != getattr(expected, f.name)
        ]
        raise CheckpointError(
            f"{path}: checkpoint made with a different model configuration ({'; '.join(diffs)})"
        )
    return config


def recorded_rpn(header: dict) -> dict:
    """The ``RPNConfig`` fields a Faster R-CNN checkpoint's header records (KeyError if
    none). Checkpoints from before the RPN's dilation existed have none: adjacent taps."""
    return {"dilation": 1, **header["rpn"]}


def with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose key starts with ``prefix`` ("param/", "momentum/"), prefix removed."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_model(path, expected_config: ModelConfig | None = None):
    """Build the network a checkpoint describes and load its weights -> (model, header).

    With ``expected_config``, a checkpoint made with another configuration is refused.
    """
    header, arrays = read_checkpoint(path)
    config = checkpoint_config(header, path, expected_config)
    if header.get("kind") not in NETWORKS:
        raise CheckpointError(f"{path}: unknown network kind {header.get('kind')!r}")
    if header["kind"] == "faster_rcnn":
        try:
            rpn_config = config_from_dict(RPNConfig, recorded_rpn(header))
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # missing, malformed
            raise CheckpointError(f"{path}: no usable RPN configuration ({err!r})") from err
        network = FasterRCNN(config, rpn_config)
    else:
        network = NETWORKS[header["kind"]](config)
    try:
        network.load_params(with_prefix(arrays, "param/"), source=str(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return network, header
