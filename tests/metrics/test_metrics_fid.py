"""FID and KID over a seeded random feature network, checked against torchmetrics
called directly on the same features; the Inception-v3 weights-file path."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

import scepter_core.metrics  # noqa: F401  (registers the metrics)
from scepter_core.errors import CheckpointError, ConfigError, ScepterError
from scepter_core.metrics.features import INCEPTION_FILES, FrozenFeatures
from scepter_core.metrics.inception import FIDInceptionV3
from scepter_core.registry import BACKBONES, METRICS

FEATURES = {'NAME': 'RandomConvFeatures', 'SEED': 3, 'FEATURE_DIM': 16, 'WIDTH': 8, 'RESOLUTION': 16}


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(cfg: dict, images: torch.Tensor, references: torch.Tensor, batch: int = 16) -> dict:
    metric = METRICS.build(cfg)
    for i in range(0, len(images), batch):
        metric.update(images[i:i + batch], references=references[i:i + batch])
    return metric.compute()


def test_fid_identical_sets_zero_and_grows_with_shift():
    real = _images(64, 0)
    cfg = {'NAME': 'FID', 'FEATURE_NETWORK': FEATURES}
    same = _run(cfg, real.clone(), real)['fid']
    small = _run(cfg, (real + 0.05).clamp(0, 1), real)['fid']
    large = _run(cfg, (real + 0.3).clamp(0, 1), real)['fid']
    assert abs(same) < 1e-3
    assert same < small < large


def test_fid_matches_torchmetrics_on_same_features():
    fake, real = _images(48, 1), _images(48, 2)
    ours = _run({'NAME': 'FID', 'FEATURE_NETWORK': FEATURES, 'PREFIX': 'val_'}, fake, real)
    direct = FrechetInceptionDistance(feature=FrozenFeatures(BACKBONES.build(dict(FEATURES))), normalize=True)
    direct.update(real, real=True)
    direct.update(fake, real=False)
    assert set(ours) == {'val_fid'}
    assert ours['val_fid'] == pytest.approx(direct.compute().item(), rel=1e-6)


@pytest.mark.filterwarnings('ignore:Metric `Kernel Inception Distance`')
def test_kid_matches_torchmetrics_and_separates_sets():
    fake, real = _images(40, 4), _images(40, 5)
    cfg = {'NAME': 'KID', 'FEATURE_NETWORK': FEATURES, 'SUBSETS': 8, 'SUBSET_SIZE': 20, 'SEED': 7}
    ours = _run(cfg, fake, real)
    direct = KernelInceptionDistance(feature=FrozenFeatures(BACKBONES.build(dict(FEATURES))),
                                     subsets=8, subset_size=20, normalize=True)
    direct.update(real, real=True)
    direct.update(fake, real=False)
    torch.manual_seed(7)  # the metric fixes the subset draws with SEED
    mean, std = direct.compute()
    assert ours['kid_mean'] == pytest.approx(mean.item(), rel=1e-5)
    assert ours['kid_std'] == pytest.approx(std.item(), rel=1e-5)
    # Repeated compute gives the same draw, and a shifted set is farther than the same set.
    same = _run(cfg, real.clone(), real)['kid_mean']
    shifted = _run(cfg, (real + 0.3).clamp(0, 1), real)['kid_mean']
    assert abs(same) < shifted
    assert _run(cfg, fake, real) == ours


def test_kid_subset_larger_than_data_names_the_key():
    cfg = {'NAME': 'KID', 'FEATURE_NETWORK': FEATURES, 'SUBSET_SIZE': 100}
    with pytest.raises(ConfigError, match='SUBSET_SIZE'):
        _run(cfg, _images(8, 0), _images(8, 1))


def test_reset_forgets_previous_batches():
    real = _images(32, 0)
    metric = METRICS.build({'NAME': 'FID', 'FEATURE_NETWORK': FEATURES})
    metric.update((real + 0.3).clamp(0, 1), references=real)
    far = metric.compute()['fid']
    metric.reset()
    metric.update(real, references=real)
    assert far > 1e-3 and abs(metric.compute()['fid']) < 1e-3


def test_protocol_errors_are_one_line():
    metric = METRICS.build({'NAME': 'FID', 'FEATURE_NETWORK': FEATURES})
    calls = [(lambda: metric.update(_images(2, 0)), 'reference images'),
             (lambda: metric.update(_images(2, 0) * 2 - 1, references=_images(2, 0)), r'\[0, 1\]'),
             (lambda: metric.update(_images(2, 0)[:, :1], references=_images(2, 0)), r'\[B, 3, H, W\]'),
             (metric.compute, 'no batch'),
             (lambda: (metric.update(_images(1, 0), references=_images(1, 1)), metric.compute()),
              'cannot be computed')]
    for call, pattern in calls:
        with pytest.raises(ScepterError, match=pattern) as err:
            call()
        assert '\n' not in str(err.value)


def test_missing_inception_weights_name_the_file(tmp_path):
    for cfg in ({'NAME': 'FID'}, {'NAME': 'KID', 'INCEPTION_WEIGHTS': str(tmp_path / 'nope.pth')}):
        with pytest.raises(ScepterError) as err:
            METRICS.build(cfg)
        message = str(err.value)
        assert '\n' not in message and INCEPTION_FILES[0] in message and 'INCEPTION_WEIGHTS' in message


def test_unknown_feature_network_is_a_config_error():
    with pytest.raises(ConfigError, match='FEATURE_NETWORK'):
        METRICS.build({'NAME': 'FID', 'FEATURE_NETWORK': {'NAME': 'NoSuchNetwork'}})


def _random_inception() -> FIDInceptionV3:
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    for m in net.modules():  # non-trivial batch-norm statistics, so loading them is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_inception_weights_file_loads_and_drives_fid(tmp_path):
    torch.set_num_threads(1)
    net = _random_inception()
    path = tmp_path / INCEPTION_FILES[0]
    torch.save(net.state_dict(), path)
    # The released files' layout: torchvision-style names, a 1008-way classifier.
    sd = net.state_dict()
    assert sd['Mixed_7c.branch_pool.conv.weight'].shape == (192, 2048, 1, 1)
    assert sd['Mixed_6e.branch7x7dbl_5.conv.weight'].shape == (192, 192, 1, 7)
    assert sd['fc.weight'].shape == (1008, 2048)

    metric = METRICS.build({'NAME': 'FID', 'INCEPTION_WEIGHTS': str(path)})
    images = _images(2, 0, size=24)
    metric.update(images, references=images)
    assert abs(metric.compute()['fid']) < 1e-2

    # Features are the loaded network's pooled activations of the 299x299 [-1, 1] input.
    x = torch.nn.functional.interpolate((images * 255).to(torch.uint8).float(), size=(299, 299),
                                       mode='bilinear', antialias=True)
    with torch.no_grad():
        expected = net.features((x - 128) / 128, 2048)
        assert torch.allclose(metric.metric.inception(images), expected, atol=1e-5)


def test_wrong_weights_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'conv.weight': torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match='missing keys'):
        METRICS.build({'NAME': 'FID', 'INCEPTION_WEIGHTS': str(path)})


def test_random_features_are_seeded_and_leave_the_global_rng_alone():
    images = _images(4, 0)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = BACKBONES.build(dict(FEATURES))
    after = torch.rand(1)
    b = BACKBONES.build(dict(FEATURES))
    c = BACKBONES.build({**FEATURES, 'SEED': 4})
    assert torch.equal(before, after)
    assert torch.equal(a(images), b(images)) and not torch.allclose(a(images), c(images))
    assert a(images).shape == (4, FEATURES['FEATURE_DIM'])


def test_feature_network_without_num_features_is_probed():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(2))
    wrapped = FrozenFeatures(net)
    assert wrapped.num_features == 20
    wrapped.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
