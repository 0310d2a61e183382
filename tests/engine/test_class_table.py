"""Decision D3: the class table from per-class mean lite0 features (engine/class_table.py)."""

from __future__ import annotations

import numpy as np
import torch

from engine.class_table import class_table_from_data, lite0_features, pick_images
from engine.config import TrainConfig
from engine.data import DatasetSpec, open_dataset
from engine.stages import build_stage
from model.feature_networks import LITE0, create_timm_model


def test_pick_images():
    labels = np.array([2, 0, 2, 1, 0, 2, 2])
    assert pick_images(labels, 3, 2).tolist() == [0, 1, 2, 3, 4]
    assert pick_images(labels, 4, 1).tolist() == [0, 1, 3]  # class 3 has no images


def test_table_is_the_per_class_mean(tmp_path):
    ds = open_dataset(DatasetSpec(resolution=16, cond=True, seed=1))
    torch.manual_seed(0)
    table = class_table_from_data(ds, "random", torch.device("cpu"), per_class=2, batch=3, seed=7, progress=False)
    assert table.shape == (1000, 320)
    # Independent: the same random trunk (same seed), one image at a time, means in float64.
    torch.manual_seed(0)
    trunk = create_timm_model(LITE0, "random", features_only=True, out_indices=(4,)).eval()
    for k in range(ds.c_dim):
        idx = np.flatnonzero(ds.labels == k)[:2]
        feats = [lite0_features(torch.from_numpy(ds.get(int(i))[0])[None], trunk).double() for i in idx]
        torch.testing.assert_close(table[k].double(), torch.cat(feats).mean(0), rtol=1e-4, atol=1e-5)
    rest = table[ds.c_dim:]  # N(0, 1) rows past c_dim, drawn from the given seed
    assert abs(float(rest.mean())) < 0.02 and abs(float(rest.std()) - 1) < 0.02
    again = class_table_from_data(ds, "random", torch.device("cpu"), per_class=2, seed=7, progress=False)
    assert torch.equal(table[ds.c_dim:], again[ds.c_dim:])


def test_stage_starts_from_the_table(tmp_path):
    """class_init=lite0: G's mapping table and every D head's table start from the saved table."""
    cfg = TrainConfig(stage=16, run_dir=str(tmp_path), preset="tiny", batch=4, batch_gpu=2, d_weights="random",
                      d_backbones=(LITE0,), class_init="lite0", class_init_images=1, workers=0)
    st = build_stage(cfg, torch.device("cpu"), log=lambda *a: None)
    from safetensors.torch import load_file

    table = load_file(str(tmp_path / "class_table.safetensors"))["table"]
    assert torch.equal(st.G.mapping.embed.weight.detach(), table)
    heads = [m.embed.weight for m in st.D.modules() if hasattr(m, "embed_proj") and m is not st.G.mapping]
    assert heads and all(torch.equal(h.detach(), table) for h in heads)
    assert st.decisions["D3_class_table"].startswith("lite0 class means")
    st.loader.close()
    random_cfg = TrainConfig(**{**{f: getattr(cfg, f) for f in ("stage", "run_dir", "preset", "batch", "batch_gpu",
                                                                   "d_weights", "d_backbones", "workers")},
                                "class_init": "auto"})
    st2 = build_stage(random_cfg, torch.device("cpu"), log=lambda *a: None)
    assert st2.decisions["D3_class_table"].startswith("random N(0,1)")
    assert not torch.equal(st2.G.mapping.embed.weight.detach(), table)
    st2.loader.close()
