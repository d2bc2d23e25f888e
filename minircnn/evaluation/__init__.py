"""Detection metrics behind ``python -m minircnn.evaluate``.

``ap``: one greedy matching routine (the VOC devkit's) and the average precisions built on
it (VOC07 11-point, area, per IoU threshold, per object size). ``diagnosis``: false
positives by cause (Hoiem et al. 2012).
"""
