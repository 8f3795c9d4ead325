"""A small CNN trained on scikit-learn's digits (8x8 images), seeded, in seconds on 2 cores, exported
to ONNX: a real trained model for channel-split tests (and later, RePurpose/DISCO sparsification).

    model, data = digits_cnn()          # onnx.ModelProto (input "x" [batch, 1, 8, 8], output "logits")
    data.x_test, data.y_test, data.accuracy

conv16-relu-conv32-relu-maxpool-conv32-relu-GAP-fc10; flattened the way torch code usually does
(`x.view(x.size(0), -1)`: Shape -> Gather -> Reshape in the exported graph).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx


THREADS_ENV = "EDGEPART_TEST_THREADS"  # 1 or 2: the thread count to check the claims at (tests/models/seeds.py)


def env_threads() -> int:
    """The intra-op thread count EDGEPART_TEST_THREADS asks for; 0 when unset."""
    return int(os.environ.get(THREADS_ENV) or 0)


def torch_threads() -> int:
    """torch's threads for training: EDGEPART_TEST_THREADS, else 2."""
    return env_threads() or 2


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # [n, 1, 8, 8] float32, scaled to 0..1
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    accuracy: float  # of the trained torch model on the test set


def digits_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=seed, stratify=d.target)


def digits_net():
    """The digits CNN as a fresh torch module: conv16-relu-conv32-relu-maxpool-conv32-relu-GAP-fc10."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 32, 3, padding=1)
            self.c3 = nn.Conv2d(32, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.c2(torch.relu(self.c1(x))))
            x = torch.relu(self.c3(nn.functional.max_pool2d(x, 2)))
            x = nn.functional.adaptive_avg_pool2d(x, 1)
            return self.fc(x.view(x.size(0), -1))

    return Net()


@lru_cache(maxsize=8)  # the seed sweeps of tests/models/seeds.py hold 5
def digits_cnn(seed: int = 0, epochs: int = 60) -> tuple[onnx.ModelProto, DigitsData]:
    """Train (seeded: the train/test split, the initial weights, the batches) and export; cached per
    process. The weights also depend on the CPU and thread count: claims about them are made over
    seeds (tests/models/seeds.py)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(torch_threads())
    x_tr, x_te, y_tr, y_te = digits_data(seed)

    net = digits_net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue()), DigitsData(x_tr, y_tr, x_te, y_te, acc)
