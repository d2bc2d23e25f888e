"""``model.summary()``: the layer table of a network, computed from its layers.

For each conv and max-pool: the output shape for one image, the stride and receptive field
in input pixels (``r += (span - 1) * j``, then ``j *= stride``, where a kernel's span is
``dilation * (kernel - 1) + 1``), the parameters and the forward FLOPs; then RoI pooling
and the FC layers on the RoIs. The last conv's stride is what RoI pooling divides image
coordinates by (Fast R-CNN section 2.1: VGG16's 1/16).
"""

from typing import NamedTuple

from minircnn.layers import Conv2d
from minircnn.layers.conv import conv_output_size


class LayerRow(NamedTuple):
    """One line of ``summary()``: ``output_shape`` for one image (``[1, C, H, W]``) or for
    the RoIs (``[R, ...]``); ``stride`` and ``receptive_field`` in input pixels (None after
    RoI pooling, where a row no longer has one place in the image); ``flops`` = 2 x the
    multiply-adds of the forward pass (pooling and ReLU counted as 0)."""

    name: str
    output_shape: tuple[int, ...]
    stride: int | None
    receptive_field: int | None
    params: int
    flops: int


def receptive_fields(layers) -> list[tuple[str, int, int]]:
    """Stride ``j`` and receptive field ``r`` (input pixels) after each of ``layers``
    ``[(name, kernel span, stride)]`` applied in order: ``r += (span - 1) * j``, then
    ``j *= stride`` (starting from ``j = r = 1``, one input pixel). Padding moves a
    field, it does not change its size. Returns ``[(name, j, r)]``."""
    jump, field, out = 1, 1, []
    for name, kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
        out.append((name, jump, field))
    return out


def spatial_rows(layers, height: int, width: int, channels: int = 3) -> list[LayerRow]:
    """Rows of ``summary()`` for convs and max-pools ``[(name, layer)]`` applied in order
    to one ``channels x height x width`` image."""
    rows, spec = [], []
    for name, layer in layers:
        k = layer.kernel_size[0] if isinstance(layer, Conv2d) else layer.kernel_size
        pad = layer.padding if isinstance(layer, Conv2d) else 0
        dilation = layer.dilation if isinstance(layer, Conv2d) else 1
        height = conv_output_size(height, k, layer.stride, pad, dilation)
        width = conv_output_size(width, k, layer.stride, pad, dilation)
        spec.append((name, dilation * (k - 1) + 1, layer.stride))  # the taps' extent
        _, jump, field = receptive_fields(spec)[-1]
        params = sum(int(p.size) for p in layer.params.values())
        flops = 0
        if isinstance(layer, Conv2d):
            channels = layer.out_channels
            flops = 2 * channels * layer.in_channels * k * k * height * width
        rows.append(LayerRow(name, (1, channels, height, width), jump, field, params, flops))
    return rows


def format_summary(rows: list[LayerRow]) -> str:
    """The rows of ``summary()`` as a text table with a totals line."""
    head = ("layer", "output shape", "stride", "rec. field", "params", "FLOPs")
    lines = [
        (
            r.name,
            str(list(r.output_shape)),
            "-" if r.stride is None else str(r.stride),
            "-" if r.receptive_field is None else str(r.receptive_field),
            f"{r.params:,}",
            f"{r.flops:,}",
        )
        for r in rows
    ]
    total = sum(r.params for r in rows), sum(r.flops for r in rows)
    lines.append(("total", "", "", "", f"{total[0]:,}", f"{total[1]:,}"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*x) for x in [head, *lines])


def backbone_layers(backbone) -> list[tuple[str, object]]:
    """``[(name, layer)]``: every conv and max-pool of a Backbone in order (ReLUs left out)."""
    out = []
    for b, (layers, pool) in enumerate(backbone.blocks):
        out += [(name, conv) for name, conv, _ in layers]
        if pool is not None:
            out.append((f"pool{b + 1}", pool))
    return out


def fc_rows(layers, n: int) -> list[LayerRow]:
    """Rows for fully connected ``layers [(name, Linear)]`` applied to ``n`` rows."""
    return [
        LayerRow(
            name,
            (n, layer.out_features),
            None,
            None,
            sum(int(p.size) for p in layer.params.values()),
            2 * n * layer.in_features * layer.out_features,
        )
        for name, layer in layers
    ]


def fast_rcnn_rows(model, height: int, width: int, n_rois: int) -> list[LayerRow]:
    """A FastRCNN's table: convs and pools on one ``height x width`` image, then RoI
    pooling and the FC layers on ``n_rois`` RoIs."""
    rows = spatial_rows(backbone_layers(model.backbone), height, width)
    p = model.config.roi_size
    channels = model.backbone.out_channels
    rows.append(LayerRow("roi_pool", (n_rois, channels, p, p), None, None, 0, 0))
    layers = [
        ("fc6", model.head.fc6),
        ("fc7", model.head.fc7),
        ("cls_score", model.cls_score),
        ("bbox_pred", model.bbox_pred),
    ]
    return rows + fc_rows(layers, n_rois)


def classifier_rows(model, n_crops: int) -> list[LayerRow]:
    """A Classifier's table: convs and pools (and the pool5 that RoI pooling replaces) on
    one ``crop_size`` crop, then the FC layers on ``n_crops`` crops."""
    size = model.config.crop_size
    rows = spatial_rows([*backbone_layers(model.backbone), ("pool5", model.pool5)], size, size)
    layers = [("fc6", model.head.fc6), ("fc7", model.head.fc7), ("cls", model.cls)]
    return rows + fc_rows(layers, n_crops)


def show_rows(rows: list[LayerRow], show: bool = True) -> list[LayerRow]:
    """Print ``rows`` as a table when ``show``; return them."""
    if show:
        print(format_summary(rows))
    return rows
