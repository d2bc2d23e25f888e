"""Faster R-CNN's region proposal network (Ren et al., NIPS 2015), on minircnn's layers.

The RPN slides a small network over the backbone's feature map (section 3.1): at every
cell, k = A anchors (reference boxes of several scales and aspect ratios) each get an
objectness score and a box regression. Modules, following the data:

    anchors.py   AnchorConfig, base_anchors, grid_anchors; the anchor-row layout of conv maps
    targets.py   label_anchors -> sample_anchors -> anchor_targets (section 3.1.2), per batch
    head.py      RPNHead (3x3 conv + ReLU, sibling 1x1 convs), RPNLoss (eq. 1)
    proposal.py  RPNProposalConfig, propose (top-N, decode, clip, min size, NMS 0.7)

Boxes follow minircnn's convention (0-based inclusive, README "Conventions"); the IoU,
box encoding/decoding, clipping and NMS are the ones of ``minircnn.ops``.
"""

from minircnn.rpn.anchors import (
    AnchorConfig,
    anchor_rows_to_map,
    base_anchors,
    grid_anchors,
    map_to_anchor_rows,
)
from minircnn.rpn.head import RPNHead, RPNLoss, RPNLossTuple
from minircnn.rpn.proposal import RPNProposalConfig, objectness, propose, propose_batch
from minircnn.rpn.targets import (
    AnchorTargetConfig,
    AnchorTargets,
    anchor_targets,
    batch_anchor_targets,
    inside_image,
    label_anchors,
    sample_anchors,
)

__all__ = [
    "AnchorConfig",
    "AnchorTargetConfig",
    "AnchorTargets",
    "RPNHead",
    "RPNLoss",
    "RPNLossTuple",
    "RPNProposalConfig",
    "anchor_rows_to_map",
    "anchor_targets",
    "base_anchors",
    "batch_anchor_targets",
    "grid_anchors",
    "inside_image",
    "label_anchors",
    "map_to_anchor_rows",
    "objectness",
    "propose",
    "propose_batch",
    "sample_anchors",
]
