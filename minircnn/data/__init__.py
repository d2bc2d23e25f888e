"""Data: the toy VOC generator, the VOCdevkit reader, and mini-batch sampling."""
