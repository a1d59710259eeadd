"""Keep the tiny 3D convolutions fast on a shared CPU: one intra-op thread."""

import torch

torch.set_num_threads(1)
