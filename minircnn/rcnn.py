"""R-CNN's test procedure with Fast R-CNN's weights: the baseline Fast R-CNN beats.

R-CNN (Girshick et al. 2014) crops every proposal out of the image, warps it to the
network's fixed input size and runs the *whole* network on each crop: ~2000 conv passes
per image where Fast R-CNN runs one and shares it through RoI pooling (section 1.1, the
"slow because it performs a ConvNet forward pass for each object proposal" point).

Here the crops go through the same trained backbone, the max-pool that RoI pooling
replaced (the pre-training classifier's ``pool5``) and the same fc6/fc7 and heads, so both
procedures use identical weights and only the test-time computation differs. (R-CNN also
pads each crop with 16 px of context and scores with SVMs; neither changes the cost
comparison.)
"""

import numpy as np

from minircnn.detect import Detector, decode_outputs
from minircnn.layers import MaxPool2d


def warp_regions(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop boxes ``[B, 4]`` (0-based inclusive) from ``image`` uint8 [H, W, 3] and warp
    each to ``size x size`` with bilinear sampling -> float32 ``[B, size, size, 3]``."""
    height, width = image.shape[:2]
    img = image.astype(np.float32)
    t = (np.arange(size) + 0.5) / size  # sample centres in [0, 1]
    xs = boxes[:, 0:1] - 0.5 + t[None, :] * (boxes[:, 2:3] - boxes[:, 0:1] + 1)  # [B, S]
    ys = boxes[:, 1:2] - 0.5 + t[None, :] * (boxes[:, 3:4] - boxes[:, 1:2] + 1)
    xs, ys = np.clip(xs, 0, width - 1), np.clip(ys, 0, height - 1)
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (xs - x0)[:, None, :, None], (ys - y0)[:, :, None, None]  # [B, 1, S, 1], [B, S, 1, 1]
    r0, r1 = y0[:, :, None], y1[:, :, None]  # rows [B, S, 1]
    c0, c1 = x0[:, None, :], x1[:, None, :]  # columns [B, 1, S]
    top = img[r0, c0] * (1 - fx) + img[r0, c1] * fx  # [B, S, S, 3]
    bottom = img[r1, c0] * (1 - fx) + img[r1, c1] * fx
    return top * (1 - fy) + bottom * fy


def rcnn_score_proposals(detector: Detector, image, proposals, batch_size: int = 128):
    """Class probabilities [P, K+1] and class-specific boxes [P, 4(K+1)] for every
    proposal, computed R-CNN's way: one full network pass per warped crop."""
    model, pre = detector.model.eval(), detector.preprocessing
    pool5 = MaxPool2d(2)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    scores, deltas = [], []
    for start in range(0, len(proposals), batch_size):
        crops = warp_regions(image, proposals[start : start + batch_size], model.config.crop_size)
        x = pre.normalise(crops)  # [B, S, S, 3] -> [B, 3, S, S]
        pooled = pool5.forward(model.backbone.forward(x))  # [B, C, P, P]
        cls_score, bbox_pred = model.classify(pooled)
        scores.append(cls_score)
        deltas.append(bbox_pred)
    cls_score, bbox_pred = np.concatenate(scores), np.concatenate(deltas)
    return decode_outputs(pre, cls_score, bbox_pred, proposals, *image.shape[:2])
