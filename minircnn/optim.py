"""SGD with momentum and weight decay, and the step learning-rate schedule.

Fast R-CNN (section 2.3, "SGD hyper-parameters") fine-tunes with momentum 0.9, weight
decay 5e-4, a global learning rate that drops by 10x after a number of iterations, and
per-layer multipliers: biases learn at twice the rate and are not decayed. The update is
Caffe's:

    v <- momentum * v + lr_p * (g + wd_p * w)        w <- w - v
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SGDConfig:
    """Optimiser settings; comments give the paper's values."""

    lr: float = 0.001  # paper: 0.001 for VGG16 fine-tuning
    momentum: float = 0.9  # paper: 0.9
    weight_decay: float = 5e-4  # paper: 0.0005, weights only
    bias_lr_mult: float = 2.0  # paper / Caffe prototxt: biases at 2x the learning rate
    steps: tuple[int, ...] = ()  # iterations at which lr is multiplied by gamma
    gamma: float = 0.1  # paper: lr / 10 after 30k of 40k iterations on VOC07


class SGD:
    """Momentum SGD over a dict of parameter arrays (updated in place).

    Parameters whose name ends in ``bias`` get ``bias_lr_mult`` and no weight decay.
    """

    def __init__(self, params: dict[str, np.ndarray], config: SGDConfig = SGDConfig()) -> None:
        self.params = params
        self.config = config
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()}

    def lr_at(self, iteration: int) -> float:
        """Learning rate of the step schedule at a 0-based iteration."""
        drops = sum(iteration >= s for s in self.config.steps)
        return self.config.lr * self.config.gamma**drops

    def step(self, grads: dict[str, np.ndarray], iteration: int) -> float:
        """Apply one update; returns the global L2 norm of ``grads`` (before decay)."""
        c = self.config
        lr = self.lr_at(iteration)
        sq = 0.0
        for name, p in self.params.items():
            g = grads[name]
            sq += float(np.vdot(g, g))
            is_bias = name.endswith("bias")
            lr_p = lr * (c.bias_lr_mult if is_bias else 1.0)
            wd_p = 0.0 if is_bias else c.weight_decay
            v = self.velocity[name]
            v *= c.momentum
            v += lr_p * (g + wd_p * p) if wd_p else lr_p * g
            p -= v
        return float(np.sqrt(sq))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Momentum buffers, keyed by parameter name."""
        return dict(self.velocity)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        missing = set(self.velocity) ^ set(state)
        if missing:
            raise ValueError(f"optimizer state does not match the parameters: {sorted(missing)}")
        for name, v in state.items():
            self.velocity[name][...] = v
