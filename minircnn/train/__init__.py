"""`python -m minircnn.train`: pre-train, convert and fine-tune Fast R-CNN end to end.

    python -m minircnn.train --tiny                      # toy set: data, proposals, training
    python -m minircnn.train --voc-root VOCdevkit --classes car,cat,dog --max-images 300
    python -m minircnn.train --tiny --resume             # continue from runs/tiny/checkpoint.npz
    python -m minircnn.train --tiny --proposals rpn      # Faster R-CNN, into runs/tiny-rpn
    python -m minircnn.train --tiny --proposals rpn --rpn-training alternating  # 4 steps

Each step (section 2.3): sample N = 2 images and R = 128 RoIs, forward, multi-task loss
(eq. 1), backward through RoI pooling into the convs, momentum SGD. A checkpoint is written
atomically after every epoch with everything needed to resume exactly (momentum buffers,
iteration, random state) and to detect (config, classes, pixel statistics, box-target
normalisation). A NaN or infinite loss stops the run and leaves the last good checkpoint.

With ``--proposals rpn`` the model is a Faster R-CNN and each step also trains its region
proposal network on the same feature map (approximate joint training, ``train.joint``);
``--rpn-training alternating`` trains it by the paper's 4-step alternating scheme instead
(``train.alternating``).
"""

from minircnn.train.command import main, report_timing
from minircnn.train.fit import fit
from minircnn.train.joint import JointTrainer
from minircnn.train.trainer import (
    StepResult,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    faster_rcnn_schedule,
)

__all__ = [
    "JointTrainer",
    "StepResult",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "faster_rcnn_schedule",
    "fit",
    "main",
    "report_timing",
]
